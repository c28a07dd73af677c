"""Command line for the site simulators: ``python -m simulators <simulator> [options]``.

Each simulator module provides ``add_arguments(parser)`` and ``run(args) -> int``;
adding one is adding a line to ``SIMULATORS``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Protocol

import structlog

from simulators import amr, conveyor, scanners, site, sorter, wms
from simulators.vendor import plc as vendor_plc
from simulators.vendor import scanner as vendor_scanner
from simulators.vendor import sorter as vendor_sorter


class SimulatorCommand(Protocol):
    """What a simulator module offers the command line."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the simulator's options to its sub-command parser."""

    def run(self, args: argparse.Namespace) -> int:
        """Run until done or signalled; return the process exit code."""


SIMULATORS: dict[str, SimulatorCommand] = {
    "wms": wms,
    "scanners": scanners,
    "sorter": sorter,
    "amr": amr,
    "conveyor": conveyor,
    "site": site,
    "vendor-sorter": vendor_sorter,
    "vendor-plc": vendor_plc,
    "vendor-scanner": vendor_scanner,
}


def _configure_logging() -> None:
    # Humans at a terminal get readable lines; journald and log shippers get JSON.
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stdout.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen simulator."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators", description="Run one of the site simulators."
    )
    sub = parser.add_subparsers(dest="simulator", required=True, metavar="SIMULATOR")
    for name, module in SIMULATORS.items():
        doc = (getattr(module, "__doc__", None) or name).strip().splitlines()[0]
        module.add_arguments(sub.add_parser(name, help=doc, description=doc))
    args = parser.parse_args(argv)
    _configure_logging()
    return SIMULATORS[args.simulator].run(args)


if __name__ == "__main__":
    sys.exit(main())
