"""Choosing dead letters: the filter operators use to list, replay and discard.

Invariants of this module:

* One filter, one SQL ``WHERE``: the listing, "replay all matching" and
  "discard all matching" select exactly the same dead letters for the same
  filter (they share ``_where``).
* ``sink``, ``kind``, ``device`` and ``type`` match exactly; ``reason`` matches
  a part of the reason (``"422"`` finds ``"422: bad container"``).
* Listing is by id, oldest first, bounded by ``limit``; ``matching_ids`` is
  bounded too, so one request never takes an unbounded transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from gateway.core.records import DeadLetter


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters: every field given must match (``None``: any)."""

    sink: str | None = None
    kind: str | None = None
    reason: str | None = None
    device: str | None = None
    type: str | None = None

    def given(self) -> dict[str, str]:
        """The fields that are set (for the audit trail)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _where(flt: DeadLetterFilter, after_id: int) -> tuple[str, list[Any]]:
    sql = "id > ?"
    args: list[Any] = [after_id]
    for column in ("sink", "kind", "device", "type"):
        value = getattr(flt, column)
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    if flt.reason is not None:
        sql += " AND instr(reason, ?) > 0"
        args.append(flt.reason)
    return sql, args


def listing(conn: sqlite3.Connection, flt: DeadLetterFilter, *, limit: int,
            after_id: int = 0) -> list[DeadLetter]:
    """Dead letters matching ``flt`` with ``id > after_id``, oldest first."""
    where, args = _where(flt, after_id)
    out = []
    for r in conn.execute(
            "SELECT id, kind, sink, device, event_id, type, reason, body, context, created"
            f" FROM dead_letters WHERE {where} ORDER BY id LIMIT ?", [*args, limit]):
        ctx = msgpack.unpackb(r[8]) if r[8] else {}
        out.append(DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], ctx, r[9]))
    return out


def matching_ids(conn: sqlite3.Connection, flt: DeadLetterFilter, *, limit: int) -> list[int]:
    """Ids of the dead letters matching ``flt``, oldest first, at most ``limit``."""
    where, args = _where(flt, 0)
    return [int(r[0]) for r in conn.execute(
        f"SELECT id FROM dead_letters WHERE {where} ORDER BY id LIMIT ?", [*args, limit])]


def count(conn: sqlite3.Connection, flt: DeadLetterFilter) -> int:
    """How many dead letters match ``flt``."""
    where, args = _where(flt, 0)
    return int(conn.execute(f"SELECT COUNT(*) FROM dead_letters WHERE {where}",
                            args).fetchone()[0])
