"""Command line: ``warehouse-gateway run|check|demo|status|init|report|events|store ...``.

The operator commands live in ``gateway.ops`` (``commands``, ``status_cli``,
``starter``); this module registers them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.exitcodes import (
    EXIT_FAILED,
    EXIT_MISSING_FILE,
    EXIT_OK,
    EXIT_STORE_LOCKED,
    STARTUP_EXIT_CODES,
)
from gateway.ops import commands as ops_commands
from gateway.ops.starter import add_init_command
from gateway.ops.status_cli import add_status_command
from gateway.ops.storefile import load_or_exit_code as _load_or_exit_code
from gateway.ops.storefile import open_store as _open_store

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config file (and that the files it names are there)."""
    cfg = _load_or_exit_code(args.config)
    if isinstance(cfg, int):
        return cfg
    from gateway.certcheck import check_certificates

    files = check_certificates(cfg)
    bad = [f for f in files if not f.ok]
    for f in files:
        if f.ok:
            _out(f.line())
        else:
            _err(f"error: {args.config}: {f.line()}")
    if bad:
        return EXIT_MISSING_FILE
    _out(f"{args.config}: ok — site {cfg.site.id}, {len(cfg.brokers)} broker(s), "
         f"{len(cfg.devices)} device(s), {len(cfg.sinks)} sink(s), store {cfg.store.path}")
    for warning in _insecure(cfg):
        _err(f"warning: {warning}")
    return 0


def _insecure(cfg: GatewayConfig) -> list[str]:
    """Config choices that work but weaken security (said at every check)."""
    from gateway.core.tls import INSECURE_WARNING

    out = [f"brokers[{i}] ({b.id}): {INSECURE_WARNING}"
           for i, b in enumerate(cfg.brokers) if b.tls and b.insecure]
    out += [f"sinks[{i}] ({s.id}): {INSECURE_WARNING}"
            for i, s in enumerate(cfg.sinks) if getattr(s, "insecure", False)]
    out += [f"devices[{i}] ({d.id}): {w}" for i, d in enumerate(cfg.devices)
            for w in getattr(d, "security_warnings", list)()]
    return out


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
        run_gateway(cfg, Path(args.config))
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


def cmd_store_stats(args: argparse.Namespace) -> int:
    """Print store statistics as JSON."""
    store = _open_store(args)
    try:
        _out(json.dumps(store.stats(), indent=2))
    finally:
        store.close()
    return 0


def version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("warehouse-gateway")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(
        prog="warehouse-gateway",
        description="Warehouse automation edge gateway: devices → durable events → WMS/ERP.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the gateway daemon")
    r.add_argument("--config", required=True, help="site config file (TOML)")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("check", help="validate a config file: every problem at once, each "
                                     "naming its key (with the nearest known key for a typo)")
    c.add_argument("--config", required=True, help="site config file (TOML)")
    c.set_defaults(func=cmd_check)
    t = sub.add_parser("try", help="commissioning dry run of one device: print its signals and "
                                   "the events they make; --browse (OPC UA), --scan (Modbus)")
    from gateway.commission.command import add_arguments as try_arguments

    try_arguments(t)
    t.set_defaults(func=cmd_try)
    d = sub.add_parser("demo", help="run the whole simulated site (put walls, conveyor, "
                                    "sorter, pack stations, AMRs), a broker, the WMS simulator "
                                    "and the gateway reading it")
    from gateway.demo import add_arguments as demo_arguments

    demo_arguments(d)
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
    ops_commands.add_store_commands(ssub, store_args, _open_store)
    ops_commands.add_commands(sub, store_args, _open_store)
    add_status_command(sub, _open_store)
    add_init_command(sub)
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
