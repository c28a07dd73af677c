"""A real browser for page tests: Debian's chromium driven by Playwright.

``chromium_path()`` installs Debian's ``chromium`` with apt when
``/usr/bin/chromium`` is missing and the tests run as root (as Mosquitto is
installed for the broker tests); Playwright only drives it
(``executable_path``): its own browser download is never used. Screenshots go
to ``$WH_TEST_ARTIFACTS`` or ``tests/artifacts/`` (not committed).
"""

from __future__ import annotations

import os
from pathlib import Path

from debian import debian_tool

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, no sandbox (root in CI), and nothing that talks to the internet.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> Path:
    """Debian's chromium, installed with apt first when missing (root only)."""
    return debian_tool(CHROMIUM, "chromium")


def artifacts_dir() -> Path:
    """Where screenshots go (created)."""
    base = os.environ.get("WH_TEST_ARTIFACTS")
    path = Path(base) if base else Path(__file__).resolve().parent / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path
