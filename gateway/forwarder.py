"""Per-sink forwarder: read after the cursor, deliver, advance — forever.

Reads one batch ahead while the current one is being delivered, and lets the
cursor advance of a delivered batch commit while the next batch is already
on its way, so the store's work and the upstream round trip overlap. The
cursor moves (and dead letters are written) in one store transaction after
``deliver`` returns; advances run in order on the store's single thread. A
crash before the advance commits resends the batch, which upstream
deduplicates by ``event_id`` and by the batch's Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import structlog

from buffer.service import StoreService
from gateway.core.protocols import Sink
from gateway.core.records import Row, SinkDeadLetter

log = structlog.get_logger(__name__)

#: How long an idle forwarder waits before looking again even without a
#: wake-up (rows replayed by an operator command from another process).
IDLE_POLL_S = 1.0


def delivered_types(rows: list[Row], dead: list[SinkDeadLetter]) -> Counter[str]:
    """Events of ``rows`` the sink took (not dead-lettered), per type."""
    out = Counter(r.type for r in rows)
    if dead:
        rejected = {d.seq for d in dead}
        out.subtract(r.type for r in rows if r.seq in rejected)
    return out


class Forwarder:
    """Moves one sink's cursor forward through the store."""

    def __init__(self, sink: Sink, service: StoreService, cursor: int) -> None:
        self.sink = sink
        self._service = service
        self.cursor = cursor
        self.events_delivered = 0
        self.dead_letters = 0
        self.batches = 0
        self.last_batch_at: float | None = None
        self.lag_s: float | None = None
        #: One wake-up event for the forwarder's life, however often ``run`` restarts.
        self._wake: asyncio.Event | None = None

    async def run(self) -> None:
        """Forward from ``self.cursor`` until cancelled.

        After a failure, set ``cursor`` from the store (``Store.cursors``)
        before calling ``run`` again: the in-memory cursor may be ahead of a
        cursor move that never committed.
        """
        sink, service = self.sink, self._service
        if self._wake is None:
            self._wake = service.listen()
        wake = self._wake
        prefetch: asyncio.Task[tuple[list[Row], int]] | None = None
        advancing: asyncio.Task[int] | None = None
        try:
            while True:
                fresh = prefetch is None
                if prefetch is not None:
                    rows, scanned = await prefetch
                    prefetch = None
                else:
                    wake.clear()
                    rows, scanned = await service.read(
                        sink.id, self.cursor, sink.batch_max, sink.routes
                    )
                if not rows:
                    if advancing is not None:
                        await advancing
                        advancing = None
                    if scanned > self.cursor:
                        # Everything scanned was routed elsewhere: just move past it.
                        await service.advance(sink.id, scanned)
                        self.cursor = scanned
                    elif fresh:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(IDLE_POLL_S):
                                await wake.wait()
                    continue
                prefetch = asyncio.create_task(
                    service.read(sink.id, scanned, sink.batch_max, sink.routes),
                    name=f"prefetch-{sink.id}",
                )
                dead = await sink.deliver(rows)
                if advancing is not None:
                    await advancing  # surfaces a store error before going further
                advancing = asyncio.create_task(
                    service.advance(sink.id, scanned, dead, delivered_types(rows, dead)),
                    name=f"advance-{sink.id}",
                )
                self.cursor = scanned
                self.batches += 1
                self.events_delivered += len(rows) - len(dead)
                self.dead_letters += len(dead)
                self.last_batch_at = time.time()
        finally:
            if advancing is not None:
                # Let a delivered batch's advance commit: it is already queued on
                # the store thread and finishes in milliseconds.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(advancing)
            if prefetch is not None:
                prefetch.cancel()
                with contextlib.suppress(BaseException):
                    await prefetch

    def snapshot(self) -> dict[str, Any]:
        """Cursor and counters for the status API."""
        return {
            "cursor": self.cursor,
            "events_delivered": self.events_delivered,
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "last_batch_at": self.last_batch_at,
        }
