#!/usr/bin/env bash
# Prepare a machine to run the gateway, its demo and its tests.
# Idempotent: installs Debian's mosquitto (the broker tests and the demo),
# chromium (the status page's browser tests, driven by Playwright) and
# prometheus (promtool checks the documented alert rules), systemd
# (systemd-analyze checks the unit) and python3.11-venv (the Debian package's
# build) when missing (needs root or sudo), and creates/updates the project's
# virtual environment in ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    need_apt+=(mosquitto)
fi
if [ ! -x /usr/bin/chromium ]; then
    need_apt+=(chromium)
fi
if [ ! -x /usr/bin/promtool ]; then
    need_apt+=(prometheus)
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need_apt+=(python3-venv)
fi
# systemd-analyze checks the unit (tests/test_systemd_unit.py); Debian's Python
# with venv builds the package (scripts/build-deb.sh, tests/test_package.py).
if ! command -v systemd-analyze >/dev/null 2>&1; then
    need_apt+=(systemd)
fi
if ! /usr/bin/python3.11 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need_apt+=(python3.11-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "setup: installing Debian packages: ${need_apt[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ready (.venv)"
