"""A real browser for page tests: Debian's chromium driven by Playwright.

``chromium_path()`` installs Debian's ``chromium`` with apt when
``/usr/bin/chromium`` is missing and the tests run as root (as Mosquitto is
installed for the broker tests); Playwright only drives it
(``executable_path``): its own browser download is never used. Screenshots go
to ``$WH_TEST_ARTIFACTS`` or ``tests/artifacts/`` (not committed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, no sandbox (root in CI), and nothing that talks to the internet.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> Path:
    """Debian's chromium, installed with apt first when missing (root only)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium "
                           "(apt-get install chromium) to run the browser tests")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env, capture_output=True,
                   timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env,
                   capture_output=True, timeout=900)
    if not CHROMIUM.exists():
        raise RuntimeError(f"apt-get install chromium did not provide {CHROMIUM}")
    return CHROMIUM


def artifacts_dir() -> Path:
    """Where screenshots go (created)."""
    base = os.environ.get("WH_TEST_ARTIFACTS")
    path = Path(base) if base else Path(__file__).resolve().parent / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path
