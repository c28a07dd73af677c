"""Debian packages a test needs, installed with apt when missing (as root), as Mosquitto is."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def debian_tool(path: Path, package: str) -> Path:
    """``path``, installing Debian's ``package`` with apt first when it is missing (root only)."""
    if path.exists():
        return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{path} is missing: install Debian's {package} "
                           f"(apt-get install {package}) to run this test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env, capture_output=True,
                   timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                   check=True, env=env, capture_output=True, timeout=900)
    if not path.exists():
        raise RuntimeError(f"apt-get install {package} did not provide {path}")
    return path
