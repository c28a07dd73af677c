"""Admission of records into the store: capacity, telemetry eviction, redeliveries,
the dead-letter budget.

Invariants of this module (store invariants 1, 4, 5, 6 and 9):

* ``admit`` runs inside the caller's write transaction and writes nothing
  outside it, so what it admitted is accepted exactly when that transaction
  commits.
* The units committed are a prefix of the units given: the first unit that
  does not fit ``max_bytes`` (after evicting) ends the batch, and no later
  unit is stored.
* Room is made first from rows every cursor has passed, then from undelivered
  telemetry, oldest first (stored rows before rows queued in the same
  transaction). Business and exception rows are never evicted; a unit's own
  telemetry is dropped before the unit is refused.
* An event whose id is in the redelivery window (``RecentIds``) or earlier in
  the same batch is not inserted and is counted as a duplicate.
* Dead letters never count against ``max_bytes``. Ingest dead letters are cut
  to ``dead_letter_payload_bytes`` (keeping original size and SHA-256) and the
  oldest are evicted to keep all dead letters within
  ``dead_letter_max_bytes``; sink dead letters are never evicted, only
  reported (``check_dead_letter_budget``).
* Every eviction, drop and duplicate is counted in ``counters`` in the same
  transaction, and so is each accepted event in the day's tallies
  (``buffer.ledger``).

Functions here take the connection and the figures they need and return what
they did; ``buffer.store.Store`` owns the running byte counts and applies the
changes once the transaction committed.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import msgpack
import structlog

from buffer import ledger
from buffer.schema import ROW_OVERHEAD, bump, min_cursor
from gateway.core.events import Event, Priority
from gateway.core.records import IngestDeadLetter, Record

log = structlog.get_logger(__name__)

#: Default share of ``max_bytes`` that dead letters may use on top of it.
DEAD_LETTER_SHARE: Final = 8
DEAD_LETTER_PAYLOAD_BYTES: Final = 4096

#: (event_id, type, priority, device, created, body): one ``events`` row to insert.
EventRow = tuple[str, str, int, str, float, bytes]
#: (device, reason, kind, body, context, created): one ingest ``dead_letters`` row.
DeadRow = tuple[str, str, str, bytes, bytes, float]


@dataclass(slots=True)
class AppendResult:
    """What one ``append`` did."""

    units_committed: int = 0
    inserted: int = 0
    #: ``inserted`` by event type.
    inserted_by_type: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    dead_letters: int = 0
    evicted_telemetry: int = 0
    dropped_telemetry: int = 0
    evicted_ingest_dead_letters: int = 0
    full: bool = False
    #: Why ``full``: ``"capacity"`` (``max_bytes``) or ``"disk"`` (file system).
    full_reason: str | None = None


@dataclass(slots=True)
class Admitted:
    """What ``admit`` wrote, for the store to account once it committed."""

    result: AppendResult
    #: The event rows inserted (not the duplicates).
    fresh: list[EventRow] = field(default_factory=list)
    #: Change of the events' bytes (inserted minus evicted stored rows).
    used_delta: int = 0
    #: Change of the dead letters' bytes (inserted minus evicted).
    dead_delta: int = 0


class RecentIds:
    """The redelivery window: the last ``window`` event ids appended."""

    __slots__ = ("_order", "ids", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        #: Membership test of the window (read directly on the append path).
        self.ids: set[str] = set()
        self._order: deque[str] = deque()

    def seed(self, conn: sqlite3.Connection) -> None:
        """Fill the window from the newest stored rows, so a redelivery after a crash
        is caught too. Replayed rows (``only_sink`` set) are not redeliveries."""
        for (event_id,) in reversed(conn.execute(
            "SELECT event_id FROM events WHERE only_sink IS NULL ORDER BY seq DESC LIMIT ?",
            (self.window,),
        ).fetchall()):
            self.remember(event_id)

    def remember(self, event_id: str) -> None:
        """Add one id, dropping the oldest beyond the window."""
        self.ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.window:
            self.ids.discard(self._order.popleft())

    def remember_rows(self, rows: Sequence[EventRow]) -> None:
        """Add the ids of inserted rows, in order."""
        ids, order, window = self.ids, self._order, self.window
        for row in rows:
            ids.add(row[0])
            order.append(row[0])
            if len(order) > window:
                ids.discard(order.popleft())


def admit(
    conn: sqlite3.Connection,
    units: Sequence[Sequence[Record]],
    now: float,
    *,
    used_bytes: int,
    max_bytes: int,
    recent: set[str],
    dead_letter_bytes: int,
    dead_letter_max_bytes: int,
) -> Admitted:
    """Write the longest prefix of ``units`` that fits ``max_bytes``, in ``conn``'s
    open write transaction (payloads already bounded by ``bound_payloads``)."""
    result = AppendResult()
    used = used_bytes
    freed_total = 0
    events: list[EventRow] = []
    dead: list[DeadRow] = []
    total = sum(_size(r) for unit in units for r in unit)
    if used + total <= max_bytes:
        # Fast path, the common case: everything fits.
        for unit in units:
            _to_rows(unit, now, events, dead)
        used += total
        result.units_committed = len(units)
    else:
        for unit in units:
            need = sum(_size(r) for r in unit)
            if used + need > max_bytes:
                over = used + need - max_bytes
                freed, n, stored = evict(conn, over, events)
                used -= freed
                freed_total += stored  # pending rows were never in used_bytes
                result.evicted_telemetry += n
            if used + need > max_bytes:
                kept = [r for r in unit if not _is_telemetry(r)]
                dropped = len(unit) - len(kept)
                need = sum(_size(r) for r in kept)
                if used + need > max_bytes:
                    result.full = True
                    result.full_reason = "capacity"
                    break
                result.dropped_telemetry += dropped
                unit = kept
            _to_rows(unit, now, events, dead)
            used += need
            result.units_committed += 1
    fresh: list[EventRow] = []
    seen: set[str] = set()
    for e in events:
        if e[0] in recent or e[0] in seen:
            result.duplicates += 1
        else:
            seen.add(e[0])
            fresh.append(e)
    _insert_events(conn, fresh)
    result.inserted = len(fresh)
    if fresh:
        result.inserted_by_type = Counter(e[1] for e in fresh)
        ledger.tally_types(conn, now, "", "accepted", result.inserted_by_type)
    if dead:
        ledger.tally(conn, now, [(ledger.INGEST_TYPE, "", "ingest_dead_letters", len(dead))])
    if dead:
        conn.executemany(
            "INSERT INTO dead_letters(device, reason, kind, body, context, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            dead,
        )
    result.dead_letters = len(dead)
    added_dead = sum(len(d[3]) + ROW_OVERHEAD for d in dead)
    evicted_dead, freed_dead = (
        evict_ingest_dead_letters(conn, dead_letter_bytes + added_dead, dead_letter_max_bytes)
        if dead else (0, 0)
    )
    result.evicted_ingest_dead_letters = evicted_dead
    bump(conn, {
        "evicted_ingest_dead_letters": evicted_dead,
        "evicted_telemetry": result.evicted_telemetry,
        "dropped_telemetry": result.dropped_telemetry,
        "ingest_dead_letters": len(dead),
        "duplicate_events": result.duplicates,
    })
    added = sum(len(e[5]) for e in fresh) + ROW_OVERHEAD * len(fresh)
    return Admitted(result, fresh, added - freed_total, added_dead - freed_dead)


def evict(conn: sqlite3.Connection, need: int, pending: list[EventRow]) -> tuple[int, int, int]:
    """Free at least ``need`` bytes.

    Returns (bytes freed, telemetry rows lost, bytes of those freed that were
    stored rows rather than ``pending`` ones).

    Rows every sink already has are freed first (they are only kept for the
    replay window), then undelivered telemetry oldest-first.
    """
    freed = 0
    floor = min_cursor(conn)
    if floor is not None:
        got = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(body)), 0) + COUNT(*) * ? FROM events WHERE seq <= ?",
            (ROW_OVERHEAD, floor),
        ).fetchone()[0]
        if got:
            conn.execute("DELETE FROM events WHERE seq <= ?", (floor,))
            freed += int(got)
    lost = 0
    while freed < need:
        rows = conn.execute(
            "SELECT seq, LENGTH(body) FROM events WHERE priority = 2 ORDER BY seq LIMIT 256"
        ).fetchall()
        if not rows:
            break
        last = rows[0][0]
        for seq, size in rows:
            freed += int(size) + ROW_OVERHEAD
            lost += 1
            last = seq
            if freed >= need:
                break
        conn.execute("DELETE FROM events WHERE priority = 2 AND seq <= ?", (last,))
    stored = freed
    # Telemetry queued in this same transaction but not inserted yet may go too.
    while freed < need:
        idx = next((i for i, e in enumerate(pending) if e[2] == Priority.TELEMETRY), None)
        if idx is None:
            break
        freed += len(pending[idx][5]) + ROW_OVERHEAD
        lost += 1
        del pending[idx]
    return freed, lost, stored


def evict_ingest_dead_letters(
    conn: sqlite3.Connection, total: int, max_bytes: int
) -> tuple[int, int]:
    """Delete the oldest ingest dead letters until ``total`` fits ``max_bytes``.

    Returns (dead letters evicted, bytes freed). Sink dead letters are never
    touched.
    """
    over = total - max_bytes
    evicted = freed = 0
    while over > freed:
        rows = conn.execute(
            "SELECT id, LENGTH(body) FROM dead_letters WHERE kind = 'ingest'"
            " ORDER BY id LIMIT 256"
        ).fetchall()
        if not rows:
            break
        last = rows[0][0]
        for id_, size in rows:
            freed += int(size) + ROW_OVERHEAD
            evicted += 1
            last = id_
            if freed >= over:
                break
        conn.execute("DELETE FROM dead_letters WHERE kind = 'ingest' AND id <= ?", (last,))
    return evicted, freed


def check_dead_letter_budget(dead_letter_bytes: int, max_bytes: int, was_over: bool) -> bool:
    """Report sink dead letters overrunning the budget (they are kept); return whether
    they do. Logs only when the budget starts being overrun."""
    over = dead_letter_bytes > max_bytes
    if over and not was_over:
        log.error("dead_letters_over_budget", dead_letter_bytes=dead_letter_bytes,
                  dead_letter_max_bytes=max_bytes,
                  action="sink dead letters are kept; replay or discard them")
    return over


def bound_payloads(units: Sequence[Sequence[Record]], limit: int) -> Sequence[Sequence[Record]]:
    """Cut ingest payloads over ``limit`` bytes (checked cheaply: most units have none)."""
    out: list[Sequence[Record]] | None = None
    for i, unit in enumerate(units):
        if any(isinstance(r, IngestDeadLetter) and len(r.payload) > limit for r in unit):
            if out is None:
                out = list(units)
            out[i] = [
                _bounded(r, limit)
                if isinstance(r, IngestDeadLetter) and len(r.payload) > limit else r
                for r in unit
            ]
    return units if out is None else out


def _bounded(record: IngestDeadLetter, limit: int) -> IngestDeadLetter:
    """``record`` with its payload cut to ``limit`` bytes, the cut recorded in context."""
    payload = record.payload
    context = {
        **record.context,
        "truncated": True,
        "original_size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return IngestDeadLetter(record.device, record.reason, payload[:limit], context)


def _size(record: Record) -> int:
    """Bytes a record takes from ``max_bytes`` (dead letters have their own budget)."""
    if isinstance(record, Event):
        return len(record.body) + ROW_OVERHEAD
    return 0


def _is_telemetry(r: Record) -> bool:
    return isinstance(r, Event) and r.priority == Priority.TELEMETRY


def _to_rows(unit: Sequence[Record], now: float, events: list[EventRow],
             dead: list[DeadRow]) -> None:
    """Append one unit's records as table rows."""
    for r in unit:
        if isinstance(r, Event):
            events.append((r.event_id, r.type, int(r.priority), r.device, now, r.body))
        else:
            dead.append((r.device, r.reason, "ingest", r.payload,
                         msgpack.packb(r.context, default=str), now))


_INSERT_ROWS: Final = 500
_insert_sql: dict[int, str] = {}


def _insert_events(conn: sqlite3.Connection, events: Sequence[EventRow]) -> None:
    """Insert rows with multi-row statements: one ``sqlite3_step`` per 500 rows.

    ``executemany`` steps once per row and releases and re-takes the GIL each
    time; with the event loop busy on another thread that hand-off, not SQLite,
    would bound the commit rate.
    """
    for start in range(0, len(events), _INSERT_ROWS):
        chunk = events[start:start + _INSERT_ROWS]
        sql = _insert_sql.get(len(chunk))
        if sql is None:
            sql = (
                "INSERT INTO events(event_id, type, priority, device, created, body)"
                " VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
            )
            _insert_sql[len(chunk)] = sql
        conn.execute(sql, [v for row in chunk for v in row])
