"""AMR fleet simulator: N vehicles speaking VDA 5050 2.1.0 over MQTT, one connection each.

Every vehicle (``simulators.amr_vehicle.Vehicle``) has its own MQTT
connection with its own last will, all driven by one asyncio loop, so
hundreds of vehicles fit in one process. Vehicles execute the orders and
instant actions they receive on ``<interface>/<major>/<manufacturer>/<serial>/
order`` and ``.../instantActions``; with ``--standalone`` each is its own
master control and sends itself pick/drop orders between the map's stations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import signal

import structlog

from simulators.amr_master import standalone
from simulators.amr_vehicle import STATIONS, AmrOptions, Vehicle

__all__ = ["STATIONS", "AmrFleet", "AmrOptions", "Vehicle", "add_arguments", "run"]

log = structlog.get_logger(__name__)

_PROGRESS_LOG_S = 10.0


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit (one socket per vehicle)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class AmrFleet:
    """Vehicles ``<serial_prefix><first>``, ``<serial_prefix><first + 1>``, ..."""

    def __init__(self, opts: AmrOptions, count: int, *, serial_prefix: str = "AMR-",
                 first: int = 1, seed: int = 1, connect_rate: float = 200.0) -> None:
        if count < 1 or connect_rate <= 0:
            raise ValueError("count and connect_rate must be > 0")
        rng = random.Random(seed)
        self.opts = opts
        self.connect_rate = connect_rate
        self.vehicles = [
            Vehicle(opts, f"{serial_prefix}{first + i:04d}", random.Random(rng.random()))
            for i in range(count)
        ]

    def connected(self) -> int:
        """Vehicles connected to the broker now."""
        return sum(v.link.connected.is_set() for v in self.vehicles)

    def published(self) -> dict[str, int]:
        """Messages published so far, per topic."""
        total: dict[str, int] = {}
        for v in self.vehicles:
            for topic, n in v.published.items():
                total[topic] = total.get(topic, 0) + n
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Run every vehicle until ``stop`` is set; then each goes OFFLINE and disconnects.

        Vehicles start at ``connect_rate`` per second: a whole fleet connecting
        at once is a storm no real site sees (and starves the machine it shares).
        """
        try:
            for i, v in enumerate(self.vehicles):
                if stop.is_set():
                    break
                v.start(*([standalone(v)] if self.opts.standalone else []))
                if (i + 1) % 10 == 0:
                    await asyncio.sleep(10 / self.connect_rate)
            await stop.wait()
        finally:
            await asyncio.gather(*(v.stop() for v in self.vehicles), return_exceptions=True)


# -- command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``amr`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--count", type=int, default=4, help="number of AMRs")
    parser.add_argument("--manufacturer", default="SimRobotics")
    parser.add_argument("--serial-prefix", default="AMR-")
    parser.add_argument("--first", type=int, default=1, help="number of the first serial")
    parser.add_argument("--interface", default="uagv", help="VDA 5050 interface name")
    parser.add_argument("--major-version", default="v2")
    parser.add_argument("--state-interval", type=float, default=30.0,
                        help="seconds between state messages when nothing changes")
    parser.add_argument("--speed", type=float, default=1.5, help="metres per second")
    parser.add_argument("--action-time", type=float, default=2.0,
                        help="seconds a pick or drop takes")
    parser.add_argument("--fail-rate", type=float, default=0.0,
                        help="probability (0-1) that a pick or drop fails")
    parser.add_argument("--standalone", action="store_true",
                        help="each AMR sends itself pick/drop orders")
    parser.add_argument("--idle-min", type=float, default=0.5,
                        help="standalone: least seconds idle between orders")
    parser.add_argument("--idle-max", type=float, default=3.0,
                        help="standalone: most seconds idle between orders")
    parser.add_argument("--connect-rate", type=float, default=200.0,
                        help="vehicles started (connected) per second")
    parser.add_argument("--seed", type=int, default=1)


def options_from_args(args: argparse.Namespace) -> AmrOptions:
    """The fleet options the command line asks for (checked)."""
    if args.count < 1:
        raise ValueError("--count must be >= 1")
    if not 0.0 <= args.fail_rate <= 1.0:
        raise ValueError("--fail-rate must be between 0 and 1")
    if args.state_interval <= 0 or args.speed <= 0 or args.action_time < 0:
        raise ValueError("--state-interval and --speed must be > 0, --action-time >= 0")
    if args.connect_rate <= 0:
        raise ValueError("--connect-rate must be > 0")
    if not 0 <= args.idle_min <= args.idle_max:
        raise ValueError("--idle-min must be >= 0 and <= --idle-max")
    return AmrOptions(
        host=args.host, port=args.port, interface=args.interface, version=args.major_version,
        manufacturer=args.manufacturer, state_interval=args.state_interval, speed=args.speed,
        action_time=args.action_time, fail_rate=args.fail_rate, standalone=args.standalone,
        idle=(args.idle_min, args.idle_max),
    )


async def _main(args: argparse.Namespace, opts: AmrOptions) -> None:
    limit = raise_open_files_limit()
    if limit < args.count + 64:
        log.warning("amr_open_files_limit", limit=limit, count=args.count,
                    action="some vehicles cannot connect; raise the hard limit (ulimit -Hn)")
    fleet = AmrFleet(opts, args.count, serial_prefix=args.serial_prefix, first=args.first,
                     seed=args.seed, connect_rate=args.connect_rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("amr_fleet_starting", count=args.count, host=opts.host, port=opts.port,
             manufacturer=opts.manufacturer, standalone=opts.standalone)
    runner = loop.create_task(fleet.run(stop), name="amr-fleet")
    while not runner.done():
        await asyncio.wait({runner}, timeout=_PROGRESS_LOG_S)
        log.info("amr_fleet_progress", connected=fleet.connected(), published=fleet.published(),
                 orders_done=sum(v.orders_done for v in fleet.vehicles))
    await runner
    log.info("amr_fleet_stopped", published=fleet.published())


def run(args: argparse.Namespace) -> int:
    """Run the ``amr`` sub-command until SIGINT/SIGTERM; return the exit code."""
    try:
        opts = options_from_args(args)
    except ValueError as err:
        log.error("amr_bad_arguments", error=str(err))
        return 2
    asyncio.run(_main(args, opts))
    return 0
