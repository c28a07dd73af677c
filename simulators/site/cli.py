"""``python -m simulators site``: run the site, or ``--verify`` a ledger against a WMS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from simulators.site.config import SiteLayout
from simulators.site.control import ControlServer
from simulators.site.flow import Site, SiteOptions
from simulators.site.ledger import read_ledger
from simulators.site.verify import fetch_wms_events, verify

__all__ = ["add_arguments", "options_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``site`` sub-command's options to ``parser``."""
    parser.add_argument("--verify", type=Path, default=None, metavar="LEDGER",
                        help="truth check: compare LEDGER with what --wms accepted, print one "
                             "JSON line, exit 0 when nothing is missing, phantom, wrong or out "
                             "of order")
    parser.add_argument("--wms", default="http://127.0.0.1:8082",
                        help="--verify: the WMS simulator's control URL")
    parser.add_argument("--kinds", default=None,
                        help="--verify: comma-separated ledger kinds to check (default: those "
                             "the gateway produces)")
    parser.add_argument("--site-id", default="DC-EAST-1")
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--modbus-port", type=int, default=5020, help="conveyor PLC (0: free)")
    parser.add_argument("--opcua-port", type=int, default=4840, help="sorter (0: free)")
    parser.add_argument("--control-port", type=int, default=8090, help="control API (0: free)")
    parser.add_argument("--ledger", type=Path, default=Path("site-ledger.jsonl"))
    parser.add_argument("--state", type=Path, default=None,
                        help="folder of the devices' retentive memory")
    parser.add_argument("--order-rate", type=float, default=0.5, help="orders per second")
    parser.add_argument("--orders", type=int, default=None, help="stop making orders after N")
    parser.add_argument("--hold-orders", action="store_true",
                        help="make no orders until POST /faults/start_orders")
    parser.add_argument("--put-walls", type=int, default=1)
    parser.add_argument("--pack-stations", type=int, default=2)
    parser.add_argument("--amrs", type=int, default=2)
    parser.add_argument("--docks", type=int, default=2)
    parser.add_argument("--zones", type=int, default=3, help="conveyor zones (1..16)")
    parser.add_argument("--conveyor-speed", type=int, default=2000, help="mm/s")
    parser.add_argument("--pick-time", type=float, default=0.3,
                        help="seconds an operator takes per pick")
    parser.add_argument("--scan-gap", type=float, default=0.25,
                        help="seconds between the scans at a pack station")
    parser.add_argument("--amr-speed", type=float, default=4.0, help="m/s")
    parser.add_argument("--amr-action-time", type=float, default=0.5,
                        help="seconds a pick or drop takes")
    parser.add_argument("--amr-rest", type=float, default=2.0,
                        help="seconds an AMR waits at the dock before its next order")
    parser.add_argument("--no-read-rate", type=float, default=0.0,
                        help="fraction of induct scans that are no-reads")
    parser.add_argument("--short-pick-rate", type=float, default=0.0)
    parser.add_argument("--overweight-rate", type=float, default=0.0)
    parser.add_argument("--underweight-rate", type=float, default=0.0)
    parser.add_argument("--jam-rate", type=float, default=0.0, help="conveyor jams per second")
    parser.add_argument("--chute-full-rate", type=float, default=0.0,
                        help="chute-full spells per second")
    parser.add_argument("--estop-rate", type=float, default=0.0,
                        help="AMR emergency stops per second")
    parser.add_argument("--seed", type=int, default=1)


def options_from_args(args: argparse.Namespace) -> SiteOptions:
    """The site the command line asks for (checked)."""
    for name in ("no_read_rate", "short_pick_rate", "overweight_rate", "underweight_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.order_rate <= 0:
        raise ValueError("--order-rate must be > 0")
    if min(args.put_walls, args.pack_stations, args.docks) < 1 or args.amrs < 0:
        raise ValueError("--put-walls, --pack-stations and --docks must be >= 1, --amrs >= 0")
    if not 1 <= args.zones <= 16:
        raise ValueError("--zones must be 1..16")
    layout = SiteLayout(site=args.site_id, put_walls=args.put_walls,
                        pack_stations=args.pack_stations, amrs=args.amrs, docks=args.docks,
                        zones=args.zones)
    return SiteOptions(
        layout=layout, broker_host=args.broker_host, broker_port=args.broker_port,
        modbus_port=args.modbus_port, opcua_port=args.opcua_port, ledger=args.ledger,
        state_dir=args.state, order_rate=args.order_rate, orders=args.orders,
        conveyor_speed=args.conveyor_speed, amr_speed=args.amr_speed,
        amr_action_s=args.amr_action_time, amr_rest_s=args.amr_rest, pick_s=args.pick_time,
        scan_gap_s=args.scan_gap,
        no_read_rate=args.no_read_rate, short_pick_rate=args.short_pick_rate,
        overweight_rate=args.overweight_rate, underweight_rate=args.underweight_rate,
        jam_rate=args.jam_rate,
        chute_full_rate=args.chute_full_rate, estop_rate=args.estop_rate,
        hold_orders=args.hold_orders, seed=args.seed)


async def _serve(opts: SiteOptions, control_port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Site(opts) as site:
        control = ControlServer(site, port=control_port)
        await control.start()
        try:
            print(json.dumps({  # noqa: T201 - the line a parent process waits for
                "event": "site_listening", "modbus_port": site.modbus_port,
                "opcua_port": site.opcua_port, "control": control.url,
                "ledger": str(opts.ledger), "time": time.time()}), flush=True)
            await stop.wait()
        finally:
            await control.stop()


def _verify(args: argparse.Namespace) -> int:
    try:
        _, entries = read_ledger(args.verify)
        kinds = None if args.kinds is None else [k for k in args.kinds.split(",") if k]
        report = verify(entries, fetch_wms_events(args.wms), kinds)
    except (OSError, ValueError) as err:
        print(f"site --verify: {err}", file=sys.stderr)  # noqa: T201
        return 2
    print(json.dumps(report, separators=(",", ":")))  # noqa: T201
    return 0 if report["ok"] else 1


def run(args: argparse.Namespace) -> int:
    """Run the ``site`` sub-command; return the exit code."""
    if args.verify is not None:
        return _verify(args)
    try:
        opts = options_from_args(args)
    except ValueError as err:
        print(f"site: {err}", file=sys.stderr)  # noqa: T201
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(opts, args.control_port))
    return 0



