"""structlog set-up: JSON lines off a TTY (journald takes it from there), console on one."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and route stdlib logging of libraries through it).

    Logs go to ``stream`` (stdout by default; commands whose output is on
    stdout log to stderr).
    """
    out = sys.stdout if stream is None else stream
    numeric = logging.getLevelNamesMapping()[level.upper()]
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the stdlib; keep them quiet unless something is wrong.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out,
                        format="%(levelname)s %(name)s %(message)s")
    for noisy in ("asyncua", "aiohttp.access", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


