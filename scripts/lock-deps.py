"""Write packaging/requirements.lock: the gateway's runtime dependencies, pinned.

Run it with the interpreter of a virtualenv where the gateway is installed
(``pip install -e .`` or the wheel); it walks the closure of the project's
``dependencies`` (markers evaluated for this interpreter, extras followed)
through the installed distributions and writes ``name==version`` lines:

    .venv/bin/python scripts/lock-deps.py > packaging/requirements.lock

The Debian package installs exactly these (``pip install --no-deps -r``), so a
build is reproducible and never resolves versions on its own. Test tools
(pytest, ruff ...) are not runtime dependencies and are not in the lock.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "warehouse-gateway"


def closure(project: str) -> dict[str, str]:
    """Canonical name -> installed version of every runtime dependency of ``project``."""
    seen: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    while todo:
        name, extras = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            sys.exit(f"error: {name} is required but not installed in {sys.prefix}")
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(e) for e in envs):
                continue
            key = canonicalize_name(req.name)
            if key in seen and not req.extras:
                continue
            seen[key] = distribution(req.name).version
            todo.append((req.name, frozenset(req.extras)))
    seen.pop(canonicalize_name(project), None)
    return seen


def main() -> None:
    """Print the lock."""
    pins = closure(PROJECT)
    lines = [f"# {PROJECT} runtime dependencies, pinned (scripts/lock-deps.py; Python "
             f"{sys.version_info.major}.{sys.version_info.minor})."]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
