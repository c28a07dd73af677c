"""Reading the store: per-sink cursors, deletion of delivered rows, dead letters.

Invariants of this module (store invariants 3 and 4):

* Each sink has one cursor, the largest ``seq`` it has finished with. A new
  sink starts just below the oldest stored row (it receives the whole
  backlog); the cursor of a sink that is no longer configured is dropped,
  and that is logged (``store_cursor_dropped``).
* A cursor only moves forward (moving it back is a ``StoreError``), and it
  moves in the same transaction that writes the sink dead letters of the rows
  it passes.
* ``read`` reports how far it scanned, including rows its route filter
  skipped, so a sink that routes nothing still lets deletion proceed.
* A row is deleted here only once every cursor has passed it and, with a
  retention window, once it is older than that window; ``prune`` deletes in
  ``seq`` order, which is also age order.
* Every cursor move, replay and discard tallies what it did for
  reconciliation (``buffer.ledger``) in its own transaction; a discard moves
  the dead letters to the archive (``buffer.audit``) instead of deleting them.
* A replayed sink dead letter becomes a new row (a new ``seq``) with
  ``only_sink`` set, so no other sink receives it twice; ingest dead letters
  (raw source messages) are never replayed. ``replay`` changes nothing when
  any id is unknown or an ingest dead letter.

Functions here take the connection (inside the caller's transaction unless
said otherwise) and return what they did, bytes freed included;
``buffer.store.Store`` keeps the running byte counts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from buffer import audit, ledger
from buffer.schema import ROW_OVERHEAD, StoreError, bump, min_cursor
from gateway.core.events import Priority
from gateway.core.records import Row, SinkDeadLetter

log = structlog.get_logger(__name__)


def register_sinks(conn: sqlite3.Connection, sinks: Iterable[str], now: float) -> None:
    """Give each sink a cursor and drop the cursors of sinks not in ``sinks``."""
    wanted = set(sinks)
    have = dict(conn.execute("SELECT sink, seq FROM cursors").fetchall())
    for gone in set(have) - wanted:
        log.warning("store_cursor_dropped", sink=gone, seq=have[gone])
        conn.execute("DELETE FROM cursors WHERE sink = ?", (gone,))
    start = conn.execute("SELECT COALESCE(MIN(seq), 1) - 1 FROM events").fetchone()[0]
    for new in wanted - set(have):
        conn.execute(
            "INSERT INTO cursors(sink, seq, updated) VALUES (?, ?, ?)", (new, start, now)
        )


def cursors(conn: sqlite3.Connection) -> dict[str, int]:
    """Every sink's cursor."""
    return dict(conn.execute("SELECT sink, seq FROM cursors").fetchall())


def read(
    conn: sqlite3.Connection,
    sink: str,
    after: int,
    limit: int,
    routes: frozenset[str] | None,
) -> tuple[list[Row], int]:
    """Rows for ``sink`` with ``seq > after`` in order, and how far was scanned.

    Runs its own read transaction, so the rows and the scanned mark are one
    snapshot.
    """
    sql = "SELECT seq, event_id, type, body FROM events WHERE seq > ?"
    args: list[Any] = [after]
    if routes is not None:
        sql += f" AND type IN ({','.join('?' * len(routes))})"
        args.extend(sorted(routes))
    sql += " AND (only_sink IS NULL OR only_sink = ?) ORDER BY seq LIMIT ?"
    args.extend([sink, limit])
    conn.execute("BEGIN")
    try:
        rows = list(map(Row._make, conn.execute(sql, args).fetchall()))
        if len(rows) < limit:
            top = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
            scanned = max(after, int(top or 0))
        else:
            scanned = rows[-1].seq
    finally:
        conn.execute("COMMIT")
    return rows, scanned


def move_cursor(
    conn: sqlite3.Connection,
    sink: str,
    to_seq: int,
    dead_letters: Sequence[SinkDeadLetter],
    now: float,
    *,
    path: Path,
    delivered: Mapping[str, int] | None = None,
) -> int:
    """Write ``sink``'s dead letters and move its cursor to ``to_seq``.

    ``delivered`` (events the sink acknowledged, per type) and the dead
    letters are tallied for reconciliation in the same transaction. Returns
    the bytes the dead letters take from their budget.
    """
    cur = conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
    if cur is None:
        raise StoreError(f"no cursor for sink {sink!r}", path=path)
    if to_seq < cur[0]:
        raise StoreError(
            f"cursor of sink {sink!r} may not move back ({cur[0]} -> {to_seq})",
            path=path,
        )
    dl_bytes = 0
    rejected: list[str | None] = []
    for dl in dead_letters:
        conn.execute(
            "INSERT INTO dead_letters(kind, sink, device, event_id, type, reason, body,"
            " created) SELECT 'sink', ?, device, event_id, type, ?, body, ? FROM events"
            " WHERE seq = ?",
            (sink, dl.reason, now, dl.seq),
        )
        row = conn.execute(
            "SELECT LENGTH(body), type FROM events WHERE seq = ?", (dl.seq,)
        ).fetchone()
        dl_bytes += 0 if row is None else int(row[0]) + ROW_OVERHEAD
        rejected.append(None if row is None else row[1])
    if dead_letters:
        bump(conn, {"sink_dead_letters": len(dead_letters)})
        ledger.tally_types(conn, now, sink, "rejected", rejected)
    if delivered:
        ledger.tally_types(conn, now, sink, "delivered", delivered)
    conn.execute(
        "UPDATE cursors SET seq = ?, updated = ? WHERE sink = ?", (to_seq, now, sink)
    )
    return dl_bytes


def prune(
    conn: sqlite3.Connection, now: float, retention_s: float, limit: int | None = None
) -> tuple[int, int]:
    """Delete rows every cursor passed (older than ``retention_s`` if it is set).

    With ``limit``, only the oldest ``limit`` of them. Returns (rows deleted,
    bytes freed from ``max_bytes``).
    """
    floor = min_cursor(conn)
    if floor is None:
        return 0, 0
    where = "seq <= ?"
    args: list[Any] = [floor]
    if retention_s > 0:
        where += " AND created < ?"
        args.append(now - retention_s)
    if limit is not None:
        # The oldest ``limit`` of them: seq order is also age order.
        top = conn.execute(
            f"SELECT seq FROM events WHERE {where} ORDER BY seq LIMIT 1 OFFSET ?",
            [*args, limit - 1],
        ).fetchone()
        if top is not None:
            where += " AND seq <= ?"
            args.append(int(top[0]))
    size, n = conn.execute(
        f"SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*) FROM events WHERE {where}", args
    ).fetchone()
    if not n:
        return 0, 0
    conn.execute(f"DELETE FROM events WHERE {where}", args)
    return int(n), int(size) + int(n) * ROW_OVERHEAD


# -- dead letters ----------------------------------------------------------------------


def replay(conn: sqlite3.Connection, ids: Sequence[int], now: float, *, path: Path) -> int:
    """Re-queue sink dead letters as new rows for the sink that rejected them.

    Returns how many were replayed.
    """
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT id, kind, sink, device, event_id, type, body FROM dead_letters"
        f" WHERE id IN ({marks})",
        list(ids),
    ).fetchall()
    found = {r[0] for r in rows}
    missing = [i for i in ids if i not in found]
    if missing:
        raise StoreError(f"no dead letter with id {missing}", path=path)
    ingest = [r[0] for r in rows if r[1] != "sink"]
    if ingest:
        raise StoreError(
            f"dead letters {ingest} are ingest dead letters (raw source messages that "
            "never became events); they cannot be replayed, only exported or discarded",
            path=path,
        )
    for _id, _kind, sink, device, event_id, type_, body in rows:
        conn.execute(
            "INSERT INTO events(event_id, type, priority, device, only_sink, created,"
            " body) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event_id, type_, int(Priority.BUSINESS), device, sink, now, body),
        )
    conn.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", list(ids))
    bump(conn, {"replayed_dead_letters": len(rows)})
    for sink in {r[2] for r in rows}:
        ledger.tally_types(conn, now, sink, "replayed", [r[5] for r in rows if r[2] == sink])
    return len(rows)


def discard(conn: sqlite3.Connection, ids: Sequence[int], now: float, audit_id: int) -> int:
    """Move dead letters to the archive (``buffer.audit``); returns how many there were."""
    marks = ",".join("?" * len(ids))
    found = conn.execute(
        f"SELECT sink, kind, type FROM dead_letters WHERE id IN ({marks})", list(ids)
    ).fetchall()
    audit.archive(conn, ids, now, audit_id)
    conn.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", list(ids))
    bump(conn, {"discarded_dead_letters": len(found)})
    for sink, kind in {(r[0], r[1]) for r in found}:
        ledger.tally_types(conn, now, sink or "", "discarded",
                           [r[2] if kind == "sink" else ledger.INGEST_TYPE
                            for r in found if (r[0], r[1]) == (sink, kind)])
    return len(found)
