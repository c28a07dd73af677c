"""What the gateway needs from a driver, and the pieces every driver shares.

A driver owns the connection(s) to one or more devices, turns what it reads
into signals, feeds them to the device's recognizer and hands the resulting
records to the ``Committer``. It never raises out of ``run`` for a device
fault: faults are counted, logged once, shown in ``snapshot``/``alerts``, and
the driver reconnects on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gateway.core.errors import IngestError
from gateway.core.records import IngestDeadLetter
from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)


LOG_INTERVAL_S = 60.0


class IngestErrors:
    """Counts bad input per (device, kind), logs it throttled, builds dead letters.

    A peer can send thousands of bad messages a second. The first one of each
    device and kind is logged at once (``ingest_rejected``, with its detail);
    repeats within ``interval_s`` are only counted, and the next line for that
    pair (or the periodic ``flush``) carries ``repeated=N``. Recognizer
    failures (``recognizer_failed``) are throttled per device and exception
    type the same way, and only the first line of each pair has the traceback.
    """

    def __init__(self, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, logger: Any = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.throttle = LogThrottle(log if logger is None else logger, interval_s, clock)
        # Keys whose traceback was logged; bounded by devices x exception types in the code.
        self._traced: set[tuple[str, str, str]] = set()

    def record(self, device: str, err: IngestError, **log_fields: Any) -> None:
        """Count one bad input (logged at once the first time this device has this kind)."""
        key = (device, err.kind)
        self.counts[key] += 1
        self.throttle.log("warning", "ingest_rejected", ("ingest_rejected", device, err.kind),
                          device=device, kind=err.kind, detail=err.detail,
                          total=self.counts[key], **log_fields)

    def failed(self, device: str, err: BaseException, **log_fields: Any) -> IngestError:
        """Log a recognizer failure (throttled) and return the error its dead letter carries."""
        name = type(err).__name__
        key = ("recognizer_failed", device, name)
        extra: dict[str, Any] = {}
        if key not in self._traced:
            self._traced.add(key)
            extra["exc_info"] = err
        self.throttle.log("error", "recognizer_failed", key, device=device, error_type=name,
                          error=repr(err)[:500], **log_fields, **extra)
        return IngestError("recognizer_error", repr(err)[:2000])

    def flush(self) -> int:
        """Write the held-back counts whose interval elapsed; return the lines written."""
        return self.throttle.flush()

    async def flush_every(self) -> None:
        """Flush the held-back counts periodically, until cancelled (run beside a driver)."""
        while True:
            await asyncio.sleep(self.throttle.interval_s / 4)
            self.flush()

    def dead_letter(self, device: str, err: IngestError, payload: bytes,
                    context: Mapping[str, Any]) -> IngestDeadLetter:
        """Count it and keep the raw input whole as an ingest dead letter."""
        self.record(device, err, **{k: v for k, v in context.items() if k in ("topic", "point")})
        return IngestDeadLetter(device=device, reason=f"{err.kind}: {err.detail}",
                                payload=bytes(payload), context=dict(context))

    def for_device(self, device: str) -> dict[str, int]:
        """Counts by kind for one device."""
        return {k: n for (d, k), n in self.counts.items() if d == device}


class Availability:
    """"Log when unavailable": one warning when a device goes away, one info when back."""

    def __init__(self, device: str, driver: str) -> None:
        self.device = device
        self.driver = driver
        self.available = False
        self.ever_connected = False
        self.last_error: str | None = None
        self.outages = 0

    def up(self, **fields: Any) -> None:
        """The device answers."""
        if not self.available:
            if self.ever_connected:
                log.info("device_available", device=self.device, driver=self.driver, **fields)
            else:
                log.info("device_connected", device=self.device, driver=self.driver, **fields)
            self.available = True
            self.ever_connected = True
            self.last_error = None

    def down(self, error: str, **fields: Any) -> None:
        """The device does not answer (or the connection failed); logs only on a change."""
        self.last_error = error
        if self.available or (not self.ever_connected and self.outages == 0):
            log.warning("device_unavailable", device=self.device, driver=self.driver,
                        error=error, **fields)
            self.outages += 1
        self.available = False


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task has a cancellation pending.

    On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives in
    the same loop iteration as the awaited result (fixed in 3.12). pymodbus and
    asyncua await every response with it, so a driver's poll loop can lose the
    one ``cancel()`` that was meant to stop it and run on forever (a shutdown or
    a test teardown then hangs). The request stays counted in
    ``Task.cancelling()``: loops call this once per turn to honour it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
