"""Command line: ``warehouse-gateway run|check|demo|store ...``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig, MissingFilesError, load_config
from gateway.exitcodes import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_MISSING_FILE,
    EXIT_OK,
    EXIT_STORE_LOCKED,
    STARTUP_EXIT_CODES,
)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _load_or_exit_code(path: str) -> GatewayConfig | int:
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


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config file (and that the files it names are there)."""
    cfg = _load_or_exit_code(args.config)
    if isinstance(cfg, int):
        return cfg
    _out(f"{args.config}: ok — site {cfg.site.id}, {len(cfg.brokers)} broker(s), "
         f"{len(cfg.devices)} device(s), {len(cfg.sinks)} sink(s), store {cfg.store.path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon."""
    cfg = _load_or_exit_code(args.config)
    if isinstance(cfg, int):
        return cfg
    import structlog

    from buffer.lock import StoreLocked
    from gateway.app import GatewayFailed, StartupError, run_gateway
    from gateway.logs import configure_logging
    from gateway.supervisor import describe

    configure_logging(cfg.log.level, cfg.log.format)
    try:
        run_gateway(cfg)
    except StoreLocked as err:
        _err(f"error: {err}")
        return EXIT_STORE_LOCKED
    except StartupError as err:
        _err(f"error: {err}")
        return STARTUP_EXIT_CODES.get(err.reason, EXIT_FAILED)
    except GatewayFailed:
        return EXIT_FAILED  # already logged as gateway_failed, with the traceback
    except Exception as err:
        # Failed outside the gateway's own handling (e.g. building a component).
        structlog.get_logger("gateway.cli").error("gateway_failed", error=describe(err),
                                                  exc_info=err)
        return EXIT_FAILED
    return EXIT_OK


def cmd_try(args: argparse.Namespace) -> int:
    """Commissioning dry run of one device (docs/commissioning.md)."""
    cfg = _load_or_exit_code(args.config)
    if isinstance(cfg, int):
        return cfg
    from gateway.commission.command import run_try

    return run_try(cfg, args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the simulated site."""
    from gateway.demo import run_demo

    return run_demo(args)


def _open_store(args: argparse.Namespace) -> Any:
    from buffer.store import Store

    # An operator command neither creates nor gives up the daemon's disk reserve.
    if args.db:
        _require_file(Path(args.db))
        return Store(args.db, recover=False, min_free_bytes=0, reserve_bytes=0)
    cfg = _load_or_exit_code(args.config) if args.config else EXIT_CONFIG
    if isinstance(cfg, int):
        raise SystemExit(cfg)
    _require_file(cfg.store.path)
    return Store(cfg.store.path, max_bytes=cfg.store.max_bytes,
                 dead_letter_max_bytes=cfg.store.dead_letter_max_bytes, recover=False,
                 min_free_bytes=0, reserve_bytes=0)


def _require_file(path: Path) -> None:
    # Opening a mistyped path would create an empty store and report it as such.
    if not path.is_file():
        _err(f"error: no store file at {path}")
        raise SystemExit(1)


def cmd_store_stats(args: argparse.Namespace) -> int:
    """Print store statistics as JSON."""
    store = _open_store(args)
    try:
        _out(json.dumps(store.stats(), indent=2))
    finally:
        store.close()
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """List dead letters."""
    from gateway.core.records import dead_letter_json

    store = _open_store(args)
    try:
        items = store.dead_letters(sink=args.sink, kind=args.kind, limit=args.limit,
                                   after_id=args.after)
    finally:
        store.close()
    for d in items:
        if args.json:
            _out(dead_letter_json(d, bodies=True))
        else:
            what = d.event_id or d.body[:60].decode("utf-8", "replace")
            _out(f"{d.id}\t{d.kind}\t{d.sink or d.device}\t{what}\t{d.reason}")
    if not items and not args.json:
        _out("no dead letters")
    return 0


def _ids_command(args: argparse.Namespace, action: str) -> int:
    from buffer.store import StoreError

    store = _open_store(args)
    try:
        n = store.replay(args.ids) if action == "replay" else store.discard(args.ids)
    except StoreError as err:
        _err(f"error: {err}")
        return 1
    finally:
        store.close()
    _out(f"{action}ed {n} dead letter(s)" if action == "replay" else f"discarded {n}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(
        prog="warehouse-gateway",
        description="Warehouse automation edge gateway: devices → durable events → WMS/ERP.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the gateway daemon")
    r.add_argument("--config", required=True, help="site config file (TOML)")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("check", help="validate a config file")
    c.add_argument("--config", required=True)
    c.set_defaults(func=cmd_check)
    t = sub.add_parser("try", help="commissioning dry run of one device: print its signals and "
                                   "the events they make; --browse (OPC UA), --scan (Modbus)")
    from gateway.commission.command import add_arguments as try_arguments

    try_arguments(t)
    t.set_defaults(func=cmd_try)
    d = sub.add_parser("demo", help="run a simulated site: broker, scanners, conveyors, sorter, "
                                    "AMRs, WMS and gateway")
    d.add_argument("--status-port", type=int, default=8080)
    d.add_argument("--wms-port", type=int, default=0)
    d.add_argument("--data-dir", type=Path, default=None,
                   help="where the demo keeps its store (default: a temporary folder)")
    d.add_argument("--scanners", type=int, default=4)
    d.add_argument("--rate", type=float, default=5.0, help="scanner reads per second")
    d.add_argument("--conveyors", type=int, default=2, help="Modbus conveyor PLCs (0: none)")
    d.add_argument("--sorter", action=argparse.BooleanOptionalAction, default=True,
                   help="the OPC UA sorter with its induct reader")
    d.add_argument("--amrs", type=int, default=4, help="VDA 5050 AMRs (0: none)")
    d.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("store", help="operate on the store file (safe while the daemon runs)")
    ssub = s.add_subparsers(dest="store_command", required=True)

    def store_args(sp: argparse.ArgumentParser) -> None:
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--config", help="site config file (its store.path is used)")
        g.add_argument("--db", help="store file path")

    st = ssub.add_parser("stats", help="store statistics (JSON)")
    store_args(st)
    st.set_defaults(func=cmd_store_stats)
    dl = ssub.add_parser("dead-letters", help="list dead letters")
    store_args(dl)
    dl.add_argument("--sink")
    dl.add_argument("--kind", choices=["sink", "ingest"])
    dl.add_argument("--limit", type=int, default=100)
    dl.add_argument("--after", type=int, default=0, help="list ids greater than this")
    dl.add_argument("--json", action="store_true", help="one JSON object per line, body included")
    dl.set_defaults(func=cmd_dead_letters)
    rp = ssub.add_parser("replay", help="re-send sink dead letters to the sink that rejected them")
    store_args(rp)
    rp.add_argument("ids", type=int, nargs="+")
    rp.set_defaults(func=lambda a: _ids_command(a, "replay"))
    ds = ssub.add_parser("discard", help="delete dead letters for good")
    store_args(ds)
    ds.add_argument("ids", type=int, nargs="+")
    ds.set_defaults(func=lambda a: _ids_command(a, "discard"))
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    import sqlite3

    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except sqlite3.DatabaseError as err:
        _err(f"error: the store file cannot be read ({err}); the daemon moves a corrupt "
             "store aside at its next start")
        return 1
    return result
