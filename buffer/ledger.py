"""Daily tallies for reconciliation: what was accepted, delivered, rejected,
replayed and discarded, per UTC day, event type and sink.

Invariants of this module:

* A tally is only ever incremented, inside the transaction whose effect it
  counts (the append, the cursor move, the replay, the discard), so it is
  exactly as durable as that effect: a restart or a ``kill -9`` neither loses
  nor doubles a count.
* The day is the UTC day the effect committed at the gateway (``now`` of the
  transaction), not the event's ``occurred_at``: device clocks do not move
  counts between days.
* ``accepted`` is counted once per stored event, sink-independent
  (``sink = ''``); duplicates absorbed by the redelivery window are not
  accepted again. ``delivered`` and ``rejected`` are per sink; a replayed
  event that is delivered again counts as delivered again (it was replayed
  once, rejected once).
* ``pending`` is not a tally: it is read from the events still beyond each
  sink's cursor, by the day they were accepted, whenever a report is made.

Nothing here keeps state; functions take the connection they work on.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

#: The counts a report shows per event type and sink, in column order.
SINK_COUNTS: Final = ("delivered", "rejected", "replayed", "discarded", "pending")
#: The ``type`` under which ingest dead letters (no event type) are tallied.
INGEST_TYPE: Final = "(ingest)"


def day_of(ts: float) -> str:
    """The UTC day ``YYYY-MM-DD`` of a Unix time."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def day_bounds(day: str) -> tuple[float, float]:
    """Unix times of the start of ``day`` (UTC) and of the next day; ``ValueError``
    unless ``day`` is ``YYYY-MM-DD``."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def tally(conn: sqlite3.Connection, now: float,
          counts: Iterable[tuple[str, str, str, int]]) -> None:
    """Add ``(type, sink, name, n)`` counts to ``now``'s day (zeros are skipped)."""
    day = day_of(now)
    conn.executemany(
        "INSERT INTO tallies(day, type, sink, name, n) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(day, type, sink, name) DO UPDATE SET n = n + excluded.n",
        [(day, t or "", s, name, n) for t, s, name, n in counts if n],
    )


def tally_types(conn: sqlite3.Connection, now: float, sink: str, name: str,
                types: Mapping[str, int] | Iterable[str | None]) -> None:
    """Tally ``name`` for ``sink`` once per type in ``types`` (a Counter or a list)."""
    per = types if isinstance(types, Mapping) else Counter(t or "" for t in types)
    tally(conn, now, [(t, sink, name, n) for t, n in per.items()])


def report(conn: sqlite3.Connection, day: str,
           routes: Mapping[str, frozenset[str] | None] | None = None) -> dict[str, Any]:
    """The reconciliation of ``day`` (UTC): per event type, ``accepted`` and per sink
    ``delivered``, ``rejected``, ``replayed``, ``discarded`` and ``pending``.

    ``routes`` (sink id to the types it receives, ``None``: all) limits
    ``pending`` to what each sink will actually be sent; without it every sink
    that has a cursor is shown and any stored type counts as pending for it.
    """
    lo, hi = day_bounds(day)
    cursors = dict(conn.execute("SELECT sink, seq FROM cursors").fetchall())
    sinks = sorted(routes) if routes is not None else sorted(cursors)
    accepted: dict[str, int] = {}
    per: dict[str, dict[str, dict[str, int]]] = {}
    ingest = 0

    def cell(type_: str, sink: str) -> dict[str, int]:
        return per.setdefault(type_, {}).setdefault(sink, dict.fromkeys(SINK_COUNTS, 0))

    for type_, sink, name, n in conn.execute(
            "SELECT type, sink, name, n FROM tallies WHERE day = ?", (day,)):
        if name == "accepted":
            accepted[type_] = accepted.get(type_, 0) + int(n)
        elif name == "ingest_dead_letters":
            ingest += int(n)
        elif name in SINK_COUNTS:
            cell(type_, sink)[name] += int(n)
    for sink in sinks:
        if sink not in cursors:
            continue
        wanted = None if routes is None else routes[sink]
        for type_, n in conn.execute(
                "SELECT type, COUNT(*) FROM events WHERE seq > ? AND created >= ?"
                " AND created < ? AND (only_sink IS NULL OR only_sink = ?) GROUP BY type",
                (cursors[sink], lo, hi, sink)):
            if wanted is None or type_ in wanted:
                cell(type_, sink)["pending"] += int(n)
    types = sorted(set(accepted) | set(per))
    rows = []
    for type_ in types:
        cells = per.get(type_, {})
        rows.append({
            "type": type_,
            "accepted": accepted.get(type_, 0),
            # A sink that does not receive the type is left out (unless it counted some).
            "sinks": {s: cells.get(s, dict.fromkeys(SINK_COUNTS, 0))
                      for s in sorted(set(sinks) | set(cells))
                      if s in cells or _receives(routes, s, type_)},
        })
    totals = {"accepted": sum(accepted.values()), "ingest_dead_letters": ingest}
    for name in SINK_COUNTS:
        totals[name] = sum(c[name] for cells in per.values() for c in cells.values())
    return {"day": day, "sinks": sinks, "types": rows, "totals": totals}


def _receives(routes: Mapping[str, frozenset[str] | None] | None, sink: str,
              type_: str) -> bool:
    wanted = None if routes is None else routes.get(sink)
    return wanted is None or type_ in wanted


def report_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A report flattened to one row per event type and sink (the CSV shape)."""
    out = []
    for r in doc["types"]:
        for sink, cells in r["sinks"].items() or {"": dict.fromkeys(SINK_COUNTS, 0)}.items():
            out.append({"day": doc["day"], "type": r["type"], "sink": sink,
                        "accepted": r["accepted"], **cells})
    return out
