"""structlog set-up: JSON lines off a TTY (journald takes it from there), console on one."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

_LEVELS = logging.getLevelNamesMapping()
#: The level in force; ``set_level`` changes it while the gateway runs (a reload).
_threshold = logging.INFO


def _level_gate(logger: object, method_name: str, event_dict: structlog.typing.EventDict
                ) -> structlog.typing.EventDict:
    """Drop events below the current level (cached loggers keep this processor)."""
    if _LEVELS.get(method_name.upper(), logging.INFO) < _threshold:
        raise structlog.DropEvent
    return event_dict


def set_level(level: str) -> None:
    """Change the log level of a running process (structlog and the stdlib's)."""
    global _threshold
    _threshold = _LEVELS[level.upper()]
    logging.getLogger().setLevel(max(_threshold, logging.WARNING))


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and route stdlib logging of libraries through it).

    Logs go to ``stream`` (stdout by default; commands whose output is on
    stdout log to stderr).
    """
    out = sys.stdout if stream is None else stream
    global _threshold
    numeric = _LEVELS[level.upper()]
    _threshold = numeric
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            _level_gate,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        # Debug calls reach ``_level_gate`` so that a reload can turn them on.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the stdlib; keep them quiet unless something is wrong.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out,
                        format="%(levelname)s %(name)s %(message)s")
    for noisy in ("asyncua", "aiohttp.access", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


