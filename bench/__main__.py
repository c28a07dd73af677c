"""Benchmarks: ``python -m bench spine``, ``python -m bench devices`` and ``python -m bench
site`` each print one JSON line of figures."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m bench")
    sub = p.add_subparsers(dest="name", required=True)
    s = sub.add_parser("spine", help="MQTT → store → WMS throughput, drain, memory, latency")
    s.add_argument("--flood", type=int, default=200_000, help="messages in the e2e flood")
    s.add_argument("--backlog", type=int, default=1_000_000, help="events in the drain backlog")
    s.add_argument("--latency-rate", type=float, default=1000.0)
    s.add_argument("--latency-seconds", type=float, default=20.0)
    s.add_argument("--workdir", default=None)
    d = sub.add_parser("devices", help="Modbus points/s, OPC UA notifications/s, AMRs per core")
    from bench import devices

    devices.add_arguments(d)
    w = sub.add_parser("site", help="orders per minute through the whole simulated site")
    from bench import site

    site.add_arguments(w)
    args = p.parse_args(argv)
    if args.name == "site":
        return site.run(args)
    if args.name == "devices":
        return devices.run(args)
    if args.name == "spine":
        from bench.spine import run

        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
