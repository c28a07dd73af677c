"""The store on the asyncio side: one dedicated thread, group commit, wake-ups.

All SQLite work runs on one thread (``StoreService.call``), so the event loop
never blocks on ``fsync``. Sources hand their records to the ``Committer``,
which gathers everything that arrives within a short window into one
transaction and only then runs each source's acknowledgement callback.

Full-policy of the committer's pending list: it is bounded by the sources'
own windows (an MQTT source holds at most its broker's in-flight window of
unacknowledged messages), and ``submit`` refuses with ``Backpressure`` past
``max_pending`` units so a misbehaving source cannot grow memory. When the
store is full, pending units stay pending (unacknowledged) and are retried
whenever a sink frees space: that is the back-pressure on sources. "Full" is
either the store's capacity (``max_bytes``) or the disk (less than
``min_free_bytes`` free, or SQLite failing with SQLITE_FULL); the retry
re-checks the disk, so space an operator frees is used within
``full_retry_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import structlog

from buffer.store import AppendResult, Store, StoreDiskFull
from gateway.core.records import Record, Row, SinkDeadLetter

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Backpressure(Exception):
    """The committer holds too many uncommitted units; the source must wait."""


class StoreService:
    """Runs a ``Store`` on its own thread and wakes forwarders on new rows."""

    def __init__(self, factory: Callable[[], Store]) -> None:
        self._factory = factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._store: Store | None = None
        self._listeners: list[asyncio.Event] = []
        self.space_freed = asyncio.Event()

    @property
    def store(self) -> Store:
        """The underlying store (only touch it through ``call``)."""
        if self._store is None:
            raise RuntimeError("store is not open")
        return self._store

    async def open(self) -> Store:
        """Open (check, recover) the store on the store thread."""
        self._store = await self._run(self._factory)
        return self._store

    async def close(self) -> None:
        """Close the store and stop its thread."""
        if self._store is not None:
            await self._run(self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` (a bound method of the store) on the store thread."""
        return await self._run(fn, *args, **kwargs)

    def listen(self) -> asyncio.Event:
        """An event set whenever new rows were committed."""
        ev = asyncio.Event()
        self._listeners.append(ev)
        return ev

    def notify(self) -> None:
        """Wake every listener (new rows are in the store)."""
        for ev in self._listeners:
            ev.set()

    async def read(
        self, sink: str, after: int, limit: int, routes: frozenset[str] | None
    ) -> tuple[list[Row], int]:
        """``Store.read`` on the store thread."""
        return await self._run(self.store.read, sink, after, limit, routes)

    async def advance(
        self, sink: str, to_seq: int, dead_letters: Sequence[SinkDeadLetter] = (),
        delivered: Mapping[str, int] | None = None,
    ) -> int:
        """``Store.advance`` on the store thread; wakes a blocked committer.

        A full disk does not stop the forwarder: the store first gives the
        move its reserve (``Store.advance``); if that is not enough the advance
        is retried every second (the batch stays delivered; only its cursor
        move waits).
        """
        warned = False
        while True:
            try:
                deleted = await self._run(self.store.advance, sink, to_seq, dead_letters,
                                           delivered)
                break
            except StoreDiskFull as err:
                if not warned:
                    log.error("store_disk_full", sink=sink, error=str(err),
                              action="cursor move retried every second")
                    warned = True
                await asyncio.sleep(1.0)
        if warned:
            log.warning("store_writable_again", sink=sink)
        if deleted:
            self.space_freed.set()
        return deleted


@dataclass(slots=True)
class _Unit:
    records: Sequence[Record]
    on_commit: Callable[[], None] | None
    future: asyncio.Future[None] | None


@dataclass(slots=True)
class CommitStats:
    """Counters of the committer, for metrics."""

    commits: int = 0
    units: int = 0
    events: int = 0
    #: ``events`` by event type (what each sink's routes take of them is its "events in").
    events_by_type: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    dead_letters: int = 0
    evicted_telemetry: int = 0
    dropped_telemetry: int = 0
    full_since: float | None = None
    #: ``"capacity"`` or ``"disk"`` while full.
    full_reason: str | None = None
    last_commit_ms: float = 0.0


class Committer:
    """Group commit: gathers units for ``window_s`` (or ``max_units``), commits once."""

    def __init__(
        self,
        service: StoreService,
        *,
        window_s: float = 0.002,
        max_units: int = 2000,
        max_pending: int = 50_000,
        full_retry_s: float = 0.5,
        high_water: int | None = None,
    ) -> None:
        self._service = service
        self._window_s = window_s
        self._max_units = max_units
        self._max_pending = max_pending
        self._full_retry_s = full_retry_s
        #: Above ``high_water`` pending units, sources should stop reading (see
        #: ``saturated``); ``on_drained`` callbacks run when it falls to half.
        self.high_water = high_water or 2 * max_units
        self._drained_callbacks: list[Callable[[], None]] = []
        self._pending: deque[_Unit] = deque()
        #: Units per commit while the disk is short: halved on each disk-full
        #: refusal, because a smaller transaction needs less WAL space.
        self._group = max_units
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self.stats = CommitStats()
        #: Monotonic times for the watchdog (``stalled_s``).
        self._pending_since = 0.0
        self._progress_at = 0.0

    @property
    def pending(self) -> int:
        """Units waiting for a commit."""
        return len(self._pending)

    def stalled_s(self, now: float) -> float:
        """How long units have waited with no commit finishing (0 when none wait).

        A full store is not stalled: each retry of its commit finishes.
        """
        if not self._pending:
            return 0.0
        return max(0.0, now - max(self._pending_since, self._progress_at))

    def _queue(self, unit: _Unit) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(unit)
        self._empty.clear()
        self._wake.set()

    @property
    def full(self) -> bool:
        """True while the store refuses business events for lack of space."""
        return self.stats.full_since is not None

    @property
    def saturated(self) -> bool:
        """True when sources should stop reading until ``on_drained`` fires."""
        return len(self._pending) >= self.high_water

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` whenever pending units fall to half the high-water mark."""
        self._drained_callbacks.append(callback)

    def submit(self, records: Sequence[Record], on_commit: Callable[[], None] | None) -> None:
        """Queue one source message's records; ``on_commit`` runs after they commit.

        Never blocks (it is called from protocol callbacks). Raises
        ``Backpressure`` when ``max_pending`` units are already waiting.
        """
        if len(self._pending) >= self._max_pending:
            raise Backpressure(f"{len(self._pending)} units are waiting for the store")
        self._queue(_Unit(records, on_commit, None))

    async def append(self, records: Sequence[Record]) -> None:
        """Queue records and wait until they are committed (accepted)."""
        while len(self._pending) >= self._max_pending:
            self._room.clear()
            await self._room.wait()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue(_Unit(records, None, fut))
        await fut

    async def flushed(self) -> None:
        """Wait until nothing is pending."""
        await self._empty.wait()

    async def run(self) -> None:
        """Commit loop; runs until cancelled, then commits what is pending.

        An unexpected error ends ``run`` with every pending unit still
        pending (none is acknowledged, dropped or cancelled), so a supervisor
        can simply call ``run`` again; it resumes with those units.
        """
        if self._pending:
            self._wake.set()  # a restart: units queued before the failure are waiting
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._window_s and len(self._pending) < self._max_units:
                    await asyncio.sleep(self._window_s)
                while self._pending:
                    if not await self._commit_once():
                        await self._wait_for_space()
        except asyncio.CancelledError:
            await self.drain()
            raise

    async def drain(self) -> None:
        """Shutdown: commit what is pending (best effort, 5 s), cancel what is left.

        Idempotent; called when ``run`` is cancelled, and by the gateway after
        the committer task ended in case it was cancelled between two runs.
        """
        # Best effort: commit what is pending so sources see their acks.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(5):
                while self._pending:
                    if not await asyncio.shield(self._commit_once()):
                        break
        for unit in self._pending:
            if unit.future is not None and not unit.future.done():
                unit.future.cancel()

    async def _wait_for_space(self) -> None:
        self._service.space_freed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._full_retry_s):
                await self._service.space_freed.wait()

    async def _commit_once(self) -> bool:
        """Commit one group; return False when the store had no room for it."""
        n = min(len(self._pending), self._group)
        group = [self._pending[i] for i in range(n)]
        t0 = time.perf_counter()
        result: AppendResult = await self._service.call(
            self._service.store.append, [u.records for u in group]
        )
        self.stats.last_commit_ms = (time.perf_counter() - t0) * 1000
        self._progress_at = time.monotonic()
        done = result.units_committed
        for _ in range(done):
            self._pending.popleft()
        if len(self._pending) < self._max_pending:
            self._room.set()
        if not self._pending:
            self._empty.set()
        if len(self._pending) <= self.high_water // 2:
            for callback in self._drained_callbacks:
                # A failing source callback must not leave the committed group
                # unacknowledged: the units below are already out of the queue.
                try:
                    callback()
                except Exception:
                    log.exception("drained_callback_failed")
        self._account(result)
        for unit in group[:done]:
            if unit.on_commit is not None:
                try:
                    unit.on_commit()
                except Exception:
                    log.exception("commit_callback_failed")
            if unit.future is not None and not unit.future.done():
                unit.future.set_result(None)
        if result.inserted or result.dead_letters:
            self._service.notify()
        if result.full and done < n and result.full_reason == "disk" and self._group > 1:
            self._group = max(1, n // 2)  # retried at once, smaller
            return True
        if done == n and self._group < self._max_units:
            self._group = min(self._max_units, self._group * 2)
        if result.full and done < n:
            reason = result.full_reason or "capacity"
            if self.stats.full_since is None or self.stats.full_reason != reason:
                if self.stats.full_since is None:
                    self.stats.full_since = time.time()
                self.stats.full_reason = reason
                store = self._service.store
                log.error("store_full", reason=reason, pending_units=len(self._pending),
                          used_bytes=store.used_bytes, max_bytes=store.max_bytes,
                          min_free_bytes=store.min_free_bytes)
            return done > 0
        if self.stats.full_since is not None:
            log.warning("store_accepting_again", reason=self.stats.full_reason,
                        full_for_s=round(time.time() - self.stats.full_since, 1))
            self.stats.full_since = None
            self.stats.full_reason = None
        return True

    def _account(self, r: AppendResult) -> None:
        s = self.stats
        s.commits += 1
        s.units += r.units_committed
        s.events += r.inserted
        s.events_by_type.update(r.inserted_by_type)
        s.duplicates += r.duplicates
        s.dead_letters += r.dead_letters
        s.evicted_telemetry += r.evicted_telemetry
        s.dropped_telemetry += r.dropped_telemetry
        if r.evicted_telemetry or r.dropped_telemetry:
            log.warning("telemetry_evicted", evicted=r.evicted_telemetry,
                        dropped=r.dropped_telemetry)

    def snapshot(self) -> dict[str, Any]:
        """Committer figures for the status API."""
        s = self.stats
        return {
            "pending_units": len(self._pending),
            "commits": s.commits,
            "events": s.events,
            "events_by_type": dict(s.events_by_type),
            "duplicates": s.duplicates,
            "ingest_dead_letters": s.dead_letters,
            "evicted_telemetry": s.evicted_telemetry,
            "dropped_telemetry": s.dropped_telemetry,
            "full": self.full,
            "full_reason": s.full_reason,
            "last_commit_ms": round(s.last_commit_ms, 3),
        }
