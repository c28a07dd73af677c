"""``warehouse-gateway try``: the dry run, ``--browse`` (OPC UA) and ``--scan`` (Modbus).

Output goes to stdout (one line per signal, event and dead letter; ``--json``
one object per line), logs to stderr. Exit codes: 0 the run ended (time,
count or Ctrl-C), 1 the device did not answer, 2 the device id is not in the
config or the option does not fit its driver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.commission.render import Printer
from gateway.commission.session import DeviceUnreachable, UnknownDevice, dry_run, find_device
from gateway.config import GatewayConfig
from gateway.exitcodes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from gateway.logs import configure_logging


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``try``."""
    p.add_argument("--config", required=True, help="site config file (TOML)")
    p.add_argument("--device", required=True, help="id of the device to try")
    p.add_argument("--duration", type=float, default=30.0,
                   help="stop after this many seconds (default 30)")
    p.add_argument("--count", type=int, default=None,
                   help="stop after this many signals (input that cannot become one counts)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="give up when the device does not answer within this many seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--browse", action="store_true",
                      help="OPC UA: list event types with their fields, and variables")
    what.add_argument("--scan", action="store_true",
                      help="Modbus: which addresses of a table answer, with their values")
    p.add_argument("--node", default=None,
                   help="--browse: an event type (its subtypes) or an object (its variables)")
    p.add_argument("--all", action="store_true",
                   help="--browse: also the standard (namespace 0) event types")
    p.add_argument("--limit", type=int, default=500,
                   help="--browse: at most this many variables")
    p.add_argument("--table", choices=["holding", "input", "coil", "discrete_input"],
                   default="holding", help="--scan: the table to scan (default holding)")
    p.add_argument("--start", type=int, default=0, help="--scan: first address (default 0)")
    p.add_argument("--end", type=int, default=None,
                   help="--scan: last address (default start + 99)")


def _with_signals(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop)``; SIGINT and SIGTERM set ``stop`` so the summary still prints."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


def run_try(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    """The ``try`` command on a validated config."""
    configure_logging("warning", cfg.log.format, stream=sys.stderr)
    try:
        dev = find_device(cfg, args.device)
    except UnknownDevice as err:
        _err(f"error: {err}")
        return EXIT_CONFIG
    if args.count is not None and args.count < 1:
        _err("error: --count must be at least 1")
        return EXIT_CONFIG
    if args.browse or args.scan:
        wanted = "opcua" if args.browse else "modbus"
        if dev.driver != wanted:
            option = "--browse" if args.browse else "--scan"
            _err(f"error: {option} is for {wanted} devices; {args.device!r} is a "
                 f"{dev.driver} device")
            return EXIT_CONFIG
    try:
        if args.browse:
            from gateway.commission.browse import browse

            return _with_signals(lambda stop: browse(dev, args, _out))
        if args.scan:
            from gateway.commission.scan import scan

            end = args.end if args.end is not None else args.start + 99
            if end < args.start:
                _err(f"error: --end {end} is below --start {args.start}")
                return EXIT_CONFIG
            return _with_signals(lambda stop: scan(dev, args.table, args.start, end,
                                                   args.json, _out))
        printer = Printer(_out, as_json=args.json)

        async def main(stop: asyncio.Event) -> int:
            stopped = await dry_run(cfg, args.device, printer, duration=args.duration,
                                    count=args.count, connect_timeout=args.connect_timeout,
                                    stop=stop)
            printer.summary(args.device, stopped)
            return EXIT_OK

        return _with_signals(main)
    except DeviceUnreachable as err:
        _err(f"error: {err}")
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Later flushes must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
