"""Opening the config and the store file for an operator command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import ConfigError, GatewayConfig, MissingFilesError, load_config
from gateway.exitcodes import EXIT_CONFIG, EXIT_MISSING_FILE

if TYPE_CHECKING:
    from buffer.store import Store


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def load_or_exit_code(path: str) -> GatewayConfig | int:
    """The config, or the exit code after its problems went to stderr."""
    try:
        return load_config(path)
    except MissingFilesError as err:
        # One line: the config is fine, a file it names is not there (yet).
        _err(f"error: {err.path}: " + "; ".join(err.problems))
        return EXIT_MISSING_FILE
    except ConfigError as err:
        _err(f"configuration invalid ({len(err.problems)} problem(s)):")
        for p in err.problems:
            _err(f"  {err.path}: {p}")
        return EXIT_CONFIG


def open_store(args: argparse.Namespace) -> Store:
    """The store of ``--db`` or of ``--config``'s ``store.path``; exits when there is none."""
    from buffer.store import Store

    # An operator command neither creates nor gives up the daemon's disk reserve.
    if args.db:
        require_file(Path(args.db))
        return Store(args.db, recover=False, min_free_bytes=0, reserve_bytes=0)
    cfg = load_or_exit_code(args.config) if args.config else EXIT_CONFIG
    if isinstance(cfg, int):
        raise SystemExit(cfg)
    require_file(cfg.store.path)
    return Store(cfg.store.path, max_bytes=cfg.store.max_bytes,
                 dead_letter_max_bytes=cfg.store.dead_letter_max_bytes, recover=False,
                 min_free_bytes=0, reserve_bytes=0,
                 archive_retention_s=cfg.store.discarded_retention)


def require_file(path: Path) -> None:
    """Exit unless ``path`` is a file: opening a mistyped path would create an empty
    store and report it as such."""
    if not path.is_file():
        _err(f"error: no store file at {path}")
        raise SystemExit(1)
