#!/usr/bin/env bash
# Build the Debian package of the gateway with dpkg-deb (docs/install.md).
#
#   scripts/build-deb.sh [--version 0.1.0-1] [--out dist]
#
# The virtualenv is built in place under a staging root at
# <stage>/opt/warehouse-gateway/venv with Debian's /usr/bin/python3.11, from
# packaging/requirements.lock (pip install --no-deps: exactly those versions)
# and the project's wheel; then every staging path is rewritten to
# /opt/warehouse-gateway (script shebangs, activate, pyvenv.cfg) and the build
# fails if any is left. Needs: python3.11 with venv (python3.11-venv), dpkg-deb,
# and the package index (or a pip cache / PIP_FIND_LINKS) for the pinned wheels.
set -euo pipefail
# The build uses only its own venv: nothing from the caller's environment.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
cd "$(dirname "$0")/.."
repo=$PWD

version=""
out="$repo/dist"
while [ $# -gt 0 ]; do
    case "$1" in
        --version) version="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "build-deb: unknown argument $1 (expected --version V, --out DIR)" >&2; exit 2 ;;
    esac
done
python=/usr/bin/python3.11
if [ ! -x "$python" ]; then
    echo "build-deb: $python is missing: apt-get install python3.11 python3.11-venv" >&2
    exit 1
fi
if [ -z "$version" ]; then
    version="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')-1"
fi
arch="$(dpkg --print-architecture)"
app=/opt/warehouse-gateway
work="$(mktemp -d /tmp/warehouse-gateway-deb.XXXXXX)"
trap 'rm -rf "$work"' EXIT
stage="$work/root"
venv="$stage$app/venv"
pipq=(-q --disable-pip-version-check --no-input)
export PYTHONWARNINGS=ignore

echo "build-deb: $version ($arch), venv at $app/venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install "${pipq[@]}" --no-deps --no-compile -r packaging/requirements.lock
"$venv/bin/python" -m pip wheel "${pipq[@]}" --no-deps -w "$work/wheel" "$repo"
"$venv/bin/python" -m pip install "${pipq[@]}" --no-deps --no-compile "$work"/wheel/*.whl

# The starter config (checked by init), as the conffile.
mkdir -p "$stage/etc/warehouse-gateway"
"$venv/bin/python" -m gateway init --config "$work/gateway.toml" --site DC-1 \
    --store /var/lib/warehouse-gateway/buffer.db >/dev/null
{
    echo "# Installed by the warehouse-gateway package (a conffile: upgrades keep your edits)."
    echo "# Secrets go in /etc/warehouse-gateway/credentials/ (root, 0700), named here by their"
    echo "# bare file name (token_file = \"wms.token\"); systemctl reload applies what it can."
    echo "# Documentation: $app/doc/install.md"
    sed "s#$work/gateway.toml#/etc/warehouse-gateway/gateway.toml#g" "$work/gateway.toml"
} > "$stage/etc/warehouse-gateway/gateway.toml"
chmod 0644 "$stage/etc/warehouse-gateway/gateway.toml"

# pip is not needed at run time (upgrades are new packages), nor its byte-code.
"$venv/bin/python" -m pip uninstall "${pipq[@]}" -y pip setuptools >/dev/null 2>&1 || true
find "$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
# Where the wheel was built is of no use on the target (and names the build folder).
for f in "$venv"/lib/python3.11/site-packages/warehouse_gateway-*.dist-info/direct_url.json; do
    rm -f "$f"
    sed -i '/direct_url.json/d' "$(dirname "$f")/RECORD"
done
# Relocate: the staging root's prefix out of every text file of the venv.
grep -rlI --null -F "$stage" "$venv" | xargs -0 -r sed -i "s#$stage##g"
if grep -rlI -F "$work" "$venv" "$stage/etc"; then
    echo "build-deb: staging paths left in the files above" >&2
    exit 1
fi

install -D -m 0644 systemd/warehouse-gateway.service "$stage/lib/systemd/system/warehouse-gateway.service"
install -D -m 0644 systemd/warehouse-gateway.sysusers "$stage/usr/lib/sysusers.d/warehouse-gateway.conf"
install -D -m 0644 systemd/warehouse-gateway.tmpfiles "$stage/usr/lib/tmpfiles.d/warehouse-gateway.conf"
install -D -m 0644 docs/install.md "$stage$app/doc/install.md"
install -D -m 0644 packaging/requirements.lock "$stage$app/requirements.lock"
install -d -m 0700 "$stage/etc/warehouse-gateway/credentials"
mkdir -p "$stage/usr/bin"
ln -s "$app/venv/bin/warehouse-gateway" "$stage/usr/bin/warehouse-gateway"

mkdir -p "$stage/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    packaging/debian/control.in > "$stage/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"

mkdir -p "$out"
deb="$out/warehouse-gateway_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "build-deb: $deb ($(du -k "$deb" | cut -f1) KiB, installed $size KiB)"
