"""The audit trail of operator actions on dead letters, and the archive of
discarded ones.

Invariants of this module:

* Every replay and every discard writes one ``audit`` row (who, through what,
  when, which ids, how many, the filter if one chose them) in the same
  transaction as its effect: an action is in the trail exactly when it
  happened. Audit rows are never deleted.
* A discarded dead letter is moved, whole, to ``discarded`` (with the time
  and the audit row of its discard), not deleted; it leaves the archive only
  once it is older than the archive's retention (``prune_archive``).
* Ids are kept as a JSON list of integers; the count is the number of dead
  letters the action changed (an id already gone is not counted).
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any


def os_user() -> str:
    """The name of the OS user running this process (its uid if it has none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def record(conn: sqlite3.Connection, now: float, *, who: str, via: str, action: str,
           ids: Sequence[int], filter: Mapping[str, Any] | None = None) -> int:
    """Write one audit row; returns its id."""
    cur = conn.execute(
        "INSERT INTO audit(at, who, via, action, count, ids, filter) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (now, who, via, action, len(ids), json.dumps(list(ids), separators=(",", ":")),
         None if filter is None else json.dumps(dict(filter), sort_keys=True)),
    )
    return int(cur.lastrowid or 0)


def entries(conn: sqlite3.Connection, *, limit: int, before_id: int | None = None
            ) -> list[dict[str, Any]]:
    """Audit rows, newest first (ids below ``before_id`` when given)."""
    sql = "SELECT id, at, who, via, action, count, ids, filter FROM audit"
    args: list[Any] = []
    if before_id is not None:
        sql += " WHERE id < ?"
        args.append(before_id)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    return [
        {"id": r[0], "at": r[1], "who": r[2], "via": r[3], "action": r[4], "count": r[5],
         "ids": json.loads(r[6]), "filter": json.loads(r[7]) if r[7] else None}
        for r in conn.execute(sql, args)
    ]


def archive(conn: sqlite3.Connection, ids: Sequence[int], now: float, audit_id: int) -> None:
    """Copy dead letters ``ids`` into the archive (the caller deletes them)."""
    marks = ",".join("?" * len(ids))
    conn.execute(
        "INSERT OR REPLACE INTO discarded(id, kind, sink, device, event_id, type, reason, body,"
        " context, created, discarded_at, audit_id)"
        " SELECT id, kind, sink, device, event_id, type, reason, body, context, created, ?, ?"
        f" FROM dead_letters WHERE id IN ({marks})",
        [now, audit_id, *ids],
    )


def prune_archive(conn: sqlite3.Connection, now: float, retention_s: float) -> int:
    """Delete archived dead letters discarded more than ``retention_s`` ago."""
    cur = conn.execute("DELETE FROM discarded WHERE discarded_at < ?", (now - retention_s,))
    return cur.rowcount


def archived(conn: sqlite3.Connection, *, limit: int) -> list[dict[str, Any]]:
    """The newest archived dead letters (no bodies), for operators."""
    return [
        {"id": r[0], "kind": r[1], "sink": r[2], "device": r[3], "event_id": r[4],
         "type": r[5], "reason": r[6], "created": r[7], "discarded_at": r[8],
         "audit_id": r[9], "body_bytes": r[10]}
        for r in conn.execute(
            "SELECT id, kind, sink, device, event_id, type, reason, created, discarded_at,"
            " audit_id, LENGTH(body) FROM discarded ORDER BY discarded_at DESC, id DESC LIMIT ?",
            (limit,))
    ]
