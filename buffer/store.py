"""The SQLite store-and-forward buffer.

Invariants (each one is held by ``tests/test_store_model.py`` against a model):

1. An event is *accepted* exactly when the transaction that inserted it has
   committed. ``append`` returns only after that commit; callers acknowledge
   their sources only after ``append`` returned.
2. ``seq`` grows forever (``INTEGER PRIMARY KEY AUTOINCREMENT``): a row
   inserted later always has a larger ``seq``, even after the table was
   emptied or the file reopened. A reader that keeps ``seq > cursor`` never
   misses a row.
3. Each sink has one cursor: the largest ``seq`` it has finished with. A
   cursor only moves forward, and it moves in the same transaction that writes
   the dead letters of the rows it passes.
4. A row is deleted only when every sink's cursor has passed it (and the
   retention window, if any, has elapsed), or when it is telemetry and the
   store is at capacity. Business and exception rows are never evicted: when
   they do not fit, ``append`` commits the units that fit and reports how many,
   so the caller can push back on its sources.
5. Redeliveries are absorbed: an event whose id is among the last
   ``dedup_window`` ids appended (seeded at open from the newest rows, so a
   source's redelivery after a crash is caught too) is not stored again and
   is counted as a duplicate. Older repeats reach upstream, which
   deduplicates by ``event_id``. (A unique index would make this exact, at
   4-5x the cost of every insert and delete: ids are random, so the index is
   written all over the file.)
6. Every eviction or drop of telemetry is counted in ``counters``, which
   survive reopen.
7. Opening a file that fails ``PRAGMA quick_check`` (or is not a database)
   moves it aside under a timestamped name, salvages every readable row into a
   fresh file (``buffer.salvage``), and reports it in ``OpenReport`` — opening
   never raises for a corrupt file.
8. A file that opens below its recorded high-water ``seq`` (``buffer.highwater``:
   its ``-wal`` was lost) is reported as rewound and ``seq`` resumes above the
   mark, so no ``seq`` upstream may have seen is handed out again.
9. Dead letters have their own byte budget (``dead_letter_max_bytes``) and
   never count against ``max_bytes``, so they can never block an event.
   Policy when the budget is exceeded: the oldest *ingest* dead letters
   (raw source messages) are evicted first and counted
   (``evicted_ingest_dead_letters``); *sink* dead letters (events an upstream
   rejected, which may be business events) are never evicted: their
   overrunning the budget is reported (``dead_letters_over_budget``), not
   enforced. An oversized ingest payload is kept as a bounded prefix
   (``dead_letter_payload_bytes``) with its original size and SHA-256 in the
   context.
10. Disk space: ``append`` admits nothing while the file system holding the
   store has less than ``min_free_bytes`` available (free blocks plus the
   file's own free pages), and reports ``full_reason="disk"``. A preallocated
   ``<store>.reserve`` file is released when a cursor move (the only thing
   that deletes delivered rows) hits a full disk, and re-created once there
   is room again, so deletes can always proceed. (Held by
   ``tests/test_store_disk_full.py`` on a real small file system, not by the
   model.)
11. Every append, cursor move, replay and discard tallies what it did (per
   UTC day, event type and sink) in its own transaction, and every replay
   and discard writes one audit row there too (``buffer.ledger``,
   ``buffer.audit``): the counts and the trail are exactly as durable as
   the effects they record. A discard archives the dead letters instead of
   deleting them; the archive is pruned after ``archive_retention_s``.

This module is the facade: ``Store`` owns the one ``sqlite3`` connection, the
transactions and the running byte counts, and is synchronous; it must be used
from one thread at a time (``buffer.service`` runs it on a dedicated thread for
the asyncio side). Each concern lives in its own module, with its own
invariants at its top, as functions over the connection (no layer in between
on the hot path):

``buffer.schema``     tables, pragmas, schema version, errors, counters, sizes (2)
``buffer.admission``  ``append``: capacity, telemetry eviction, redeliveries,
                      the dead-letter budget (invariants 1, 4, 5, 6, 9)
``buffer.disk``       the low-disk mark and the reserve file (invariant 10)
``buffer.cursors``    read, cursor moves, deletion, dead letters (3, 4)
``buffer.ledger``     daily tallies for reconciliation
``buffer.audit``      the audit trail of replays and discards, the discard archive
``buffer.deadletters`` the dead-letter filter; ``buffer.trace`` a container's events
``buffer.recovery``   open checks, corruption move-aside and salvage wiring,
                      the rewind check (7, 8; ``buffer.salvage``, ``buffer.highwater``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from buffer import audit, deadletters, ledger, trace
from buffer import cursors as cursor_ops
from buffer.admission import (
    DEAD_LETTER_PAYLOAD_BYTES,
    DEAD_LETTER_SHARE,
    AppendResult,
    RecentIds,
    admit,
    bound_payloads,
    check_dead_letter_budget,
)
from buffer.deadletters import DeadLetterFilter
from buffer.disk import MIN_FREE_BYTES, RESERVE_BYTES, DiskGuard
from buffer.highwater import COUNTER as HIGH_WATER_COUNTER
from buffer.recovery import OpenReport, open_store
from buffer.schema import (
    ROW_OVERHEAD,
    SCHEMA_VERSION,
    WAL_KEEP_BYTES,
    StoreDiskFull,
    StoreError,
    Synchronous,
    bump,
    is_disk_full,
    measure_dead,
    measure_used,
    top,
)
from gateway.core.records import DeadLetter, Record, Row, SinkDeadLetter
from gateway.core.throttle import LogThrottle

__all__ = [
    "DEAD_LETTER_PAYLOAD_BYTES",
    "DEAD_LETTER_SHARE",
    "MIN_FREE_BYTES",
    "RESERVE_BYTES",
    "ROW_OVERHEAD",
    "SCHEMA_VERSION",
    "WAL_KEEP_BYTES",
    "AppendResult",
    "DeadLetterFilter",
    "OpenReport",
    "Store",
    "StoreDiskFull",
    "StoreError",
    "Synchronous",
]

log = structlog.get_logger(__name__)

#: How long discarded dead letters stay in the archive (``store.discarded_retention``).
ARCHIVE_RETENTION_S = 30 * 86400.0
#: How often a running gateway prunes the archive (at a cursor move).
ARCHIVE_PRUNE_EVERY_S = 3600.0


class Store:
    """The SQLite buffer: events, per-sink cursors, dead letters, counters."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 2 * 1024**3,
        synchronous: Synchronous = "FULL",
        retention_s: float = 0.0,
        clock: Any = time.time,
        recover: bool = True,
        dedup_window: int = 16_384,
        dead_letter_max_bytes: int | None = None,
        dead_letter_payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES,
        min_free_bytes: int = MIN_FREE_BYTES,
        reserve_bytes: int = RESERVE_BYTES,
        archive_retention_s: float = ARCHIVE_RETENTION_S,
    ) -> None:
        for name, value in (("dead_letter_max_bytes", dead_letter_max_bytes or 0),
                            ("dead_letter_payload_bytes", dead_letter_payload_bytes),
                            ("min_free_bytes", min_free_bytes), ("reserve_bytes", reserve_bytes)):
            if value < 0:
                raise ValueError(f"store {name} must be >= 0, got {value}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.synchronous: Synchronous = synchronous
        self.retention_s = retention_s
        self.dead_letter_max_bytes = (
            max_bytes // DEAD_LETTER_SHARE if dead_letter_max_bytes is None
            else dead_letter_max_bytes
        )
        self.dead_letter_payload_bytes = dead_letter_payload_bytes
        self.min_free_bytes = min_free_bytes
        self.reserve_bytes = reserve_bytes
        self.archive_retention_s = archive_retention_s
        self._archive_pruned_at = 0.0
        self._clock = clock
        self._disk_log = LogThrottle(log, 60.0, clock=clock)
        self._disk = DiskGuard(self.path, min_free_bytes=min_free_bytes,
                               reserve_bytes=reserve_bytes, throttle=self._disk_log)
        self.reserve_path = self._disk.reserve_path
        self._dl_over_budget = False
        self._conn, self._high_water, self.open_report = open_store(
            self.path, synchronous=synchronous, recover=recover, clock=clock, disk=self._disk)
        self.used_bytes = self._measure_used()
        self.dead_letter_bytes = self._measure_dead()
        self.dedup_window = dedup_window
        self._data_version: int | None = None
        self._recent = RecentIds(dedup_window)
        self._recent.seed(self._conn)

    # -- state ------------------------------------------------------------------------

    _bump = staticmethod(bump)
    _top = staticmethod(top)

    def _measure_used(self) -> int:
        """Bytes of events, as counted against ``max_bytes``."""
        return measure_used(self._conn)

    def _measure_dead(self) -> int:
        """Bytes of dead letters, as counted against ``dead_letter_max_bytes``."""
        return measure_dead(self._conn)

    def refresh_if_changed_elsewhere(self) -> bool:
        """Re-measure ``used_bytes`` if another process (an operator command) committed.

        ``PRAGMA data_version`` changes only for commits by other connections.
        """
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        if changed:
            self.used_bytes = self._measure_used()
            self.dead_letter_bytes = self._measure_dead()
        return changed

    def close(self) -> None:
        """Close the connection. Everything committed is on disk already."""
        self._high_water.on_close(self._conn)
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            # A COMMIT that fails (SQLITE_FULL while appending to the WAL) leaves
            # the transaction open: it must be rolled back here, or a later
            # COMMIT would store rows their caller was told were refused.
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLITE_FULL/IOERR may have rolled back already
                conn.execute("ROLLBACK")
            raise
        self._high_water.after_commit(conn)

    # -- disk space (buffer.disk) -----------------------------------------------------

    def disk_room(self) -> int:
        """Bytes new rows can still use: free file-system space plus the file's free pages."""
        return self._disk.room(self._conn)

    def disk_low(self) -> bool:
        """True while ``append`` admits nothing for lack of disk space.

        Low below ``min_free_bytes``; once low, low until a quarter more is
        free, so a store hovering at the mark does not flap.
        """
        return self._disk.low(self._conn)

    def ensure_reserve(self) -> bool:
        """Create ``<store>.reserve`` if it is missing and the disk has room for it.

        Room means ``reserve_bytes`` plus ``min_free_bytes`` free, so creating
        it never pushes the store into the low-disk state. Returns True when
        the reserve exists afterwards.
        """
        return self._disk.ensure_reserve()

    # -- append (buffer.admission) ----------------------------------------------------

    def append(self, units: Sequence[Sequence[Record]]) -> AppendResult:
        """Commit ``units`` (each the records of one source message) in one transaction.

        Commits the longest prefix of units that fits the capacity after
        evicting telemetry; ``units_committed`` says how many. Telemetry that
        does not fit is dropped and counted instead of blocking. Commits
        nothing (``full_reason="disk"``) while the disk is low (invariant 10).
        Ingest dead letters do not count against capacity; oversized payloads
        are cut and old ingest dead letters evicted to their budget (invariant 9).
        """
        if not units:
            return AppendResult()
        if self._disk.low(self._conn):
            self._disk_log.log("error", "store_disk_low", "low", path=str(self.path),
                               disk_room_bytes=self.disk_room(),
                               min_free_bytes=self.min_free_bytes)
            return AppendResult(full=True, full_reason="disk")
        units = bound_payloads(units, self.dead_letter_payload_bytes)
        now = self._clock()
        try:
            with self._txn() as conn:
                done = admit(conn, units, now, used_bytes=self.used_bytes,
                             max_bytes=self.max_bytes, recent=self._recent.ids,
                             dead_letter_bytes=self.dead_letter_bytes,
                             dead_letter_max_bytes=self.dead_letter_max_bytes)
        except sqlite3.OperationalError as err:
            if is_disk_full(err):
                # Retried every 0.5 s by the committer: one line a minute.
                self._disk_log.log("error", "store_disk_full", "append", path=str(self.path),
                                   error=str(err))
                return AppendResult(full=True, full_reason="disk")
            raise
        # Only once committed: a rolled-back transaction changed nothing.
        self.used_bytes += done.used_delta
        self.dead_letter_bytes += done.dead_delta
        result = done.result
        if result.evicted_ingest_dead_letters:
            self._disk_log.log("warning", "ingest_dead_letters_evicted", "dl_evict",
                               evicted=result.evicted_ingest_dead_letters,
                               dead_letter_bytes=self.dead_letter_bytes,
                               dead_letter_max_bytes=self.dead_letter_max_bytes)
        self._check_dead_letter_budget()
        self._recent.remember_rows(done.fresh)
        return result

    def _check_dead_letter_budget(self) -> None:
        self._dl_over_budget = check_dead_letter_budget(
            self.dead_letter_bytes, self.dead_letter_max_bytes, self._dl_over_budget)

    @property
    def dead_letters_over_budget(self) -> bool:
        """True while dead letters (necessarily sink ones) exceed their budget."""
        return self.dead_letter_bytes > self.dead_letter_max_bytes

    # -- reading and cursors (buffer.cursors) -----------------------------------------

    def register_sinks(self, sinks: Iterable[str]) -> dict[str, int]:
        """Make sure each sink has a cursor and drop cursors of sinks that are gone.

        A new sink starts at the oldest stored row, so it receives the whole
        backlog. Returns the cursors.
        """
        now = self._clock()
        with self._txn() as conn:
            cursor_ops.register_sinks(conn, sinks, now)
        return self.cursors()

    def cursors(self) -> dict[str, int]:
        """Every sink's cursor."""
        return cursor_ops.cursors(self._conn)

    def read(
        self,
        sink: str,
        after: int,
        limit: int,
        routes: frozenset[str] | None = None,
    ) -> tuple[list[Row], int]:
        """Rows for ``sink`` with ``seq > after`` in order, and how far was scanned.

        The second value is the ``seq`` the cursor may move to once the rows
        are delivered: it covers rows skipped by the route filter too, so a
        sink that routes nothing still lets retention proceed.
        """
        return cursor_ops.read(self._conn, sink, after, limit, routes)

    def advance(
        self,
        sink: str,
        to_seq: int,
        dead_letters: Sequence[SinkDeadLetter] = (),
        delivered: Mapping[str, int] | None = None,
    ) -> int:
        """Move ``sink``'s cursor to ``to_seq`` and write its dead letters, in one txn.

        ``delivered`` (per event type) is tallied for reconciliation in that
        transaction. Then deletes rows every cursor has passed (after the
        retention window). Returns the number of rows deleted.
        """
        now = self._clock()
        disk = self._disk
        # On a low disk the delete goes in small steps of its own (each one
        # checkpointed, so the WAL is reused instead of grown): a delete of a
        # whole batch in the cursor's transaction can need more WAL space
        # than is left.
        stepwise = disk.short()
        released = False
        while True:
            used = self.used_bytes
            try:
                with self._txn() as conn:
                    dl_bytes = cursor_ops.move_cursor(conn, sink, to_seq, dead_letters, now,
                                                      path=self.path, delivered=delivered)
                    deleted = 0 if stepwise else self._prune(conn, now)
                break
            except sqlite3.OperationalError as err:
                self.used_bytes = used  # _prune counted rows the rollback kept
                if not is_disk_full(err):
                    raise
                if not stepwise:
                    stepwise = True  # the cursor move alone needs only a few pages
                    continue
                # The cursor move is what frees space: give it the reserve, once.
                if not released and disk.release_reserve("cursor_move_disk_full"):
                    released = True
                    continue
                raise StoreDiskFull(f"{self.path}: disk full: {err}", path=self.path) from err
        self.dead_letter_bytes += dl_bytes  # only once committed
        if dl_bytes:
            self._check_dead_letter_budget()
        if stepwise:
            deleted += self._prune_stepwise(now)
        if deleted:
            disk.checkpoint_if_short(self._conn)
        disk.ensure_reserve()
        if now - self._archive_pruned_at >= ARCHIVE_PRUNE_EVERY_S:
            with contextlib.suppress(sqlite3.OperationalError):  # a full disk: next time
                self.prune_archive()
        return deleted

    def _prune_stepwise(self, now: float, step: int = 100) -> int:
        """Delete what the cursors passed, ``step`` rows per transaction.

        Stops quietly at a full disk: the rest goes at the next cursor move.
        """
        deleted = 0
        while True:
            used = self.used_bytes
            try:
                with self._txn() as conn:
                    n = self._prune(conn, now, limit=step)
            except sqlite3.OperationalError as err:
                self.used_bytes = used
                if not is_disk_full(err):
                    raise
                self._disk_log.log("warning", "store_prune_disk_full", "prune",
                                   path=str(self.path), error=str(err))
                return deleted
            deleted += n
            if n < step:
                return deleted
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _prune(self, conn: sqlite3.Connection, now: float, limit: int | None = None) -> int:
        """``buffer.cursors.prune`` in the open transaction, counted in ``used_bytes``.

        Counted before the COMMIT, not after: other threads (status, tests)
        read ``used_bytes`` without the store thread, and must never see the
        rows gone but still counted. A caller whose transaction fails puts
        the old figure back.
        """
        n, freed = cursor_ops.prune(conn, now, self.retention_s, limit)
        self.used_bytes -= freed
        return n

    def prune(self) -> int:
        """Delete rows every cursor passed whose retention window elapsed."""
        with self._txn() as conn:
            return self._prune(conn, self._clock())

    # -- dead letters (buffer.cursors, buffer.deadletters, buffer.audit) --------------

    def dead_letters(
        self, *, sink: str | None = None, kind: str | None = None, limit: int = 100,
        after_id: int = 0, device: str | None = None, type: str | None = None,
        reason: str | None = None,
    ) -> list[DeadLetter]:
        """List dead letters, oldest first (``reason`` matches a part of the reason)."""
        flt = DeadLetterFilter(sink=sink, kind=kind, reason=reason, device=device, type=type)
        return deadletters.listing(self._conn, flt, limit=limit, after_id=after_id)

    def count_dead_letters(self, flt: DeadLetterFilter) -> int:
        """How many dead letters match ``flt``."""
        return deadletters.count(self._conn, flt)

    def replay(self, ids: Sequence[int], *, who: str | None = None, via: str = "store",
               filter: DeadLetterFilter | None = None) -> int:
        """Re-queue sink dead letters for the sink that rejected them.

        The event is appended again with a new ``seq`` and ``only_sink`` set, so
        other sinks do not receive it twice. Ingest dead letters cannot be
        replayed (they never became events) and are refused with an error.
        The replay is written to the audit trail (``who``: the OS user unless
        given; ``via``: the CLI, the API, ...) in the same transaction.
        """
        now = self._clock()
        with self._txn() as conn:
            n = cursor_ops.replay(conn, ids, now, path=self.path)
            audit.record(conn, now, who=who or audit.os_user(), via=via, action="replay",
                         ids=ids, filter=None if filter is None else filter.given())
        # The bodies moved from the dead-letter budget to the events' capacity.
        self.used_bytes = self._measure_used()
        self.dead_letter_bytes = self._measure_dead()
        return n

    def discard(self, ids: Sequence[int], *, who: str | None = None, via: str = "store",
                filter: DeadLetterFilter | None = None) -> int:
        """Take dead letters out of the queue, into the archive, with an audit row.

        Archived bodies are deleted once older than ``archive_retention_s``.
        """
        now = self._clock()
        with self._txn() as conn:
            audit_id = audit.record(conn, now, who=who or audit.os_user(), via=via,
                                    action="discard", ids=ids,
                                    filter=None if filter is None else filter.given())
            n = cursor_ops.discard(conn, ids, now, audit_id)
            conn.execute("UPDATE audit SET count = ? WHERE id = ?", (n, audit_id))
            audit.prune_archive(conn, now, self.archive_retention_s)
        self.dead_letter_bytes = self._measure_dead()
        self._check_dead_letter_budget()
        return n

    def replay_matching(self, flt: DeadLetterFilter, *, who: str | None = None,
                        via: str = "store", limit: int = 100_000) -> int:
        """Replay every sink dead letter matching ``flt`` (at most ``limit``)."""
        if flt.kind == "ingest":
            raise StoreError("ingest dead letters (raw source messages that never became "
                             "events) cannot be replayed, only discarded", path=self.path)
        flt = dataclasses.replace(flt, kind="sink")
        ids = deadletters.matching_ids(self._conn, flt, limit=limit)
        return self.replay(ids, who=who, via=via, filter=flt) if ids else 0

    def discard_matching(self, flt: DeadLetterFilter, *, who: str | None = None,
                         via: str = "store", limit: int = 100_000) -> int:
        """Discard every dead letter matching ``flt`` (at most ``limit``)."""
        ids = deadletters.matching_ids(self._conn, flt, limit=limit)
        return self.discard(ids, who=who, via=via, filter=flt) if ids else 0

    def audit_trail(self, *, limit: int = 100, before_id: int | None = None
                    ) -> list[dict[str, Any]]:
        """Replays and discards, newest first."""
        return audit.entries(self._conn, limit=limit, before_id=before_id)

    def archived(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest discarded dead letters still in the archive (no bodies)."""
        return audit.archived(self._conn, limit=limit)

    def prune_archive(self) -> int:
        """Delete archived dead letters older than ``archive_retention_s``."""
        now = self._clock()
        self._archive_pruned_at = now
        with self._txn() as conn:
            return audit.prune_archive(conn, now, self.archive_retention_s)

    # -- reconciliation and tracing (buffer.ledger, buffer.trace) ---------------------

    def reconciliation(self, day: str, routes: Mapping[str, frozenset[str] | None] | None = None
                       ) -> dict[str, Any]:
        """The day's counts per event type and sink (``buffer.ledger.report``)."""
        self._conn.execute("BEGIN")
        try:
            return ledger.report(self._conn, day, routes)
        finally:
            self._conn.execute("COMMIT")

    def stored_events(self, *, after: int, device: str | None = None, type: str | None = None,
                      container: str | None = None, limit: int = 1000, newest: bool = False
                      ) -> tuple[list[tuple[Any, ...]], int]:
        """Stored events after ``after`` matching the filters (``buffer.trace``)."""
        return trace.stored_events(self._conn, after=after, device=device, type=type,
                                   container=container, limit=limit, newest=newest)

    def container_trace(self, container: str, *,
                        routes: Mapping[str, frozenset[str] | None] | None = None,
                        limit: int = 100) -> dict[str, Any]:
        """A container's recent events and where each one is (``buffer.trace``)."""
        return trace.container_trace(self._conn, container, routes=routes, limit=limit)

    # -- stats ------------------------------------------------------------------------

    def notes(self, device: str) -> dict[str, bytes]:
        """The recognizer notes of ``device`` (``RecognizerNote``), by key."""
        return {str(k): bytes(v) for k, v in self._conn.execute(
            "SELECT key, value FROM notes WHERE device = ? ORDER BY updated, key", (device,))}

    def counters(self) -> dict[str, int]:
        """Counters that survive restarts (evictions, duplicates, dead letters...)."""
        # The high-water mark shares the table (it survives salvage) but is not a count.
        return dict(self._conn.execute(
            "SELECT name, value FROM counters WHERE name != ?", (HIGH_WATER_COUNTER,)
        ).fetchall())

    def stats(self) -> dict[str, Any]:
        """A cheap snapshot for the status page and metrics."""
        conn = self._conn
        lo, n = conn.execute("SELECT MIN(seq), COUNT(*) FROM events").fetchone()
        last = top(conn)
        dl = dict(conn.execute("SELECT kind, COUNT(*) FROM dead_letters GROUP BY kind").fetchall())
        cursors = self.cursors()
        return {
            "path": str(self.path),
            "events": int(n),
            "first_seq": lo,
            "last_seq": last,
            "used_bytes": self.used_bytes,
            "max_bytes": self.max_bytes,
            "full": self.used_bytes >= self.max_bytes,
            "dead_letter_bytes": self.dead_letter_bytes,
            "dead_letter_max_bytes": self.dead_letter_max_bytes,
            "disk_room_bytes": self.disk_room(),
            "min_free_bytes": self.min_free_bytes,
            "disk_low": self.disk_low(),
            "reserve_bytes": self._disk.reserve_size(),
            "cursors": cursors,
            "backlog": {s: max(0, last - c) for s, c in cursors.items()},
            # Commit time of the oldest event after each cursor (the age of what waits).
            "oldest_pending": {s: _oldest_after(conn, c) if last > c else None
                               for s, c in cursors.items()},
            "dead_letters": {"sink": dl.get("sink", 0), "ingest": dl.get("ingest", 0)},
            "counters": self.counters(),
            "file_bytes": _file_bytes(self.path),
            "open_report": {**dataclasses.asdict(self.open_report),
                            "salvaged_by": dict(self.open_report.salvaged_by)},
        }


def _oldest_after(conn: sqlite3.Connection, cursor: int) -> float | None:
    row = conn.execute("SELECT created FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                       (cursor,)).fetchone()
    return None if row is None else float(row[0])


def _file_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(str(path) + suffix).st_size
    return total
