"""Tracing one container (or code) through the store: its recent events and
where each one is for each sink.

Invariants of this module:

* Read-only, one read transaction: the events, the cursors and the dead
  letters are one snapshot.
* Bounded: only the newest ``scan_rows`` events and ``scan_dead`` dead
  letters are searched, and at most ``limit`` events are returned, so a search
  costs the same on a full store as on an empty one.
* A match is the container as a whole JSON string value anywhere in the
  event (``"TOTE-1"`` does not match ``"TOTE-10"``).
* Where an event is, per sink: ``pending`` (beyond the sink's cursor),
  ``delivered``, ``dead-lettered`` (held, with the dead letter's id),
  ``discarded`` (archived), ``replayed`` (a new row carries it again), or
  ``not routed``. Events every sink received are deleted after
  ``store.retention``; older history is not in the store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any, Final

SCAN_ROWS: Final = 200_000
SCAN_DEAD: Final = 20_000


def container_trace(conn: sqlite3.Connection, container: str, *,
                    routes: Mapping[str, frozenset[str] | None] | None = None,
                    limit: int = 100, scan_rows: int = SCAN_ROWS,
                    scan_dead: int = SCAN_DEAD) -> dict[str, Any]:
    """The newest ``limit`` events naming ``container``, oldest first, with where each is."""
    needle = json.dumps(container, ensure_ascii=False).encode()
    conn.execute("BEGIN")
    try:
        cursors = dict(conn.execute("SELECT sink, seq FROM cursors").fetchall())
        top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        rows = conn.execute(
            "SELECT seq, event_id, type, device, only_sink, created, body FROM events"
            " WHERE seq > ? AND instr(body, ?) > 0 ORDER BY seq DESC LIMIT ?",
            (int(top) - scan_rows, needle, limit)).fetchall()
        top_dl = conn.execute("SELECT COALESCE(MAX(id), 0) FROM dead_letters").fetchone()[0]
        dead = conn.execute(
            "SELECT id, sink, event_id, type, device, reason, created, body FROM dead_letters"
            " WHERE kind = 'sink' AND id > ? AND instr(body, ?) > 0 ORDER BY id",
            (int(top_dl) - scan_dead, needle)).fetchall()
        ids = sorted({r[1] for r in rows})
        marks = ",".join("?" * len(ids))
        gone = conn.execute(
            f"SELECT sink, event_id, id FROM discarded WHERE event_id IN ({marks})", ids
        ).fetchall() if ids else []
    finally:
        conn.execute("COMMIT")
    sinks = sorted(routes) if routes is not None else sorted(cursors)
    held = {(d[1], d[2]): d[0] for d in dead}
    discarded = {(s, e): i for s, e, i in gone}
    replays: dict[tuple[str, str], int] = {}
    for r in rows:
        if r[4] is not None:
            replays[(r[4], r[1])] = max(replays.get((r[4], r[1]), 0), r[0])
    events = []
    for seq, event_id, type_, device, only_sink, created, body in reversed(rows):
        where: dict[str, str] = {}
        for sink in sinks:
            if only_sink is not None and only_sink != sink:
                continue
            wanted = None if routes is None else routes[sink]
            if wanted is not None and type_ not in wanted:
                where[sink] = "not routed"
            elif sink in cursors and seq > cursors[sink]:
                where[sink] = "pending"
            elif replays.get((sink, event_id), seq) > seq:
                where[sink] = f"replayed (seq {replays[(sink, event_id)]})"
            elif (sink, event_id) in held:
                where[sink] = f"dead-lettered (id {held[(sink, event_id)]})"
            elif (sink, event_id) in discarded:
                where[sink] = f"discarded (id {discarded[(sink, event_id)]})"
            else:
                where[sink] = "delivered"
        doc = _event(body)
        events.append({"seq": seq, "event_id": event_id, "type": type_, "device": device,
                       "stored_at": created, "occurred_at": doc.get("occurred_at"),
                       "data": doc.get("data"), "replay_for": only_sink, "where": where})
    stored = {r[1] for r in rows}
    orphans = [
        {"dead_letter": d[0], "sink": d[1], "event_id": d[2], "type": d[3], "device": d[4],
         "reason": d[5], "dead_lettered_at": d[6], "occurred_at": _event(d[7]).get("occurred_at"),
         "data": _event(d[7]).get("data")}
        for d in dead if d[2] not in stored
    ]
    return {"container": container, "events": events, "dead_letters_only": orphans,
            "searched_rows": scan_rows}


def _event(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def stored_events(conn: sqlite3.Connection, *, after: int, device: str | None = None,
                  type: str | None = None, container: str | None = None, limit: int = 1000,
                  newest: bool = False) -> tuple[list[tuple[Any, ...]], int]:
    """Stored events with ``seq > after`` matching the filters, and the ``seq`` scanned to.

    Rows are ``(seq, created, type, device, body)`` in ``seq`` order: the
    first ``limit`` (or, with ``newest``, the last ``limit``). The second
    value is the ``after`` of the next call (it covers rows that did not match).
    """
    where, args = "seq > ? AND seq <= ?", list[Any]([after])
    for column, value in (("device", device), ("type", type)):
        if value:
            where += f" AND {column} = ?"
            args.append(value)
    if container:
        where += " AND instr(body, ?) > 0"
        args.append(json.dumps(container, ensure_ascii=False).encode())
    conn.execute("BEGIN")
    try:
        top = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        args.insert(1, top)
        order = "DESC" if newest else ""
        rows = conn.execute(f"SELECT seq, created, type, device, body FROM events WHERE {where}"
                            f" ORDER BY seq {order} LIMIT ?", [*args, limit]).fetchall()
    finally:
        conn.execute("COMMIT")
    if newest:
        rows.reverse()
        return rows, max(top, after)
    scanned = rows[-1][0] if len(rows) == limit else max(top, after)
    return rows, scanned
