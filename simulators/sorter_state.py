"""The sorter simulator's retentive memory: counters, tracking ids and its event log.

A real sorter PLC keeps its tracking-id sequence and counters in retentive
memory, and a plant that must not lose confirms keeps a confirm log the
gateway can read back. This module is both, in one SQLite file
(``<state dir>/sorter.db``; in memory without a state dir):

- ``counters``: next tracking id, next confirm sequence number, next scan id,
  the per-result counts and the total — updated in the same transaction that
  logs the happenings they count;
- ``log``: every divert confirm and scan event the simulator fired, with its
  source object, its event time (µs, strictly increasing per source) and its
  fields. The log is committed *before* the event is fired, as a PLC writes
  its retentive record before it signals: a kill between the two leaves the
  happening in the log, and the gateway reads it from the event history.

``LogHistory`` serves the log through OPC UA HistoryRead (events), so a client
that was disconnected reads exactly what the device recorded.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from asyncua import ua
from asyncua.common.events import Event
from asyncua.server.history import HistoryStorageInterface

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_source_time ON log(source, time_us);
"""

#: Counter names (per-result counts use the result with ``-`` as ``_``).
COUNTERS = ("next_tracking_id", "next_confirm_seq", "next_scan_id", "total", "diverted",
            "no_read", "no_destination", "chute_full", "recirculated", "lost")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(time_us: int) -> datetime:
    """µs since the epoch → aware UTC datetime (exact, no float rounding)."""
    return _EPOCH + timedelta(microseconds=time_us)


def to_us(when: datetime) -> int:
    """Aware datetime → µs since the epoch."""
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One fired event as the device recorded it."""

    seq: int
    source: str
    time_us: int
    fields: dict[str, Any]


class SorterState:
    """Counters and event log in one SQLite file (or in memory)."""

    def __init__(self, state_dir: Path | None) -> None:
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            path = str(state_dir / "sorter.db")
        else:
            path = ":memory:"
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a confirm the device fired must survive the kill that follows it.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        rows = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        self.counters: dict[str, int] = {name: int(rows.get(name, 0)) for name in COUNTERS}
        for name in ("next_tracking_id", "next_confirm_seq", "next_scan_id"):
            self.counters[name] = max(self.counters[name], 1)
        self.last_time_us: dict[str, int] = dict(
            self._db.execute("SELECT source, MAX(time_us) FROM log GROUP BY source").fetchall()
        )

    def next_time_us(self, source: str, now_us: int) -> int:
        """An event time for ``source``: now, or 1 µs after its previous event."""
        t = max(now_us, self.last_time_us.get(source, 0) + 1)
        self.last_time_us[source] = t
        return t

    def commit(self, records: Iterable[tuple[str, int, dict[str, Any]]]) -> list[LogRecord]:
        """Log ``(source, time_us, fields)`` records and save all counters, atomically."""
        db = self._db
        logged: list[LogRecord] = []
        db.execute("BEGIN")
        try:
            for source, time_us, fields in records:
                cur = db.execute("INSERT INTO log(source, time_us, fields) VALUES (?, ?, ?)",
                                 (source, time_us, json.dumps(fields, separators=(",", ":"))))
                assert cur.lastrowid is not None
                logged.append(LogRecord(cur.lastrowid, source, time_us, fields))
            db.executemany("INSERT OR REPLACE INTO counters(name, value) VALUES (?, ?)",
                           list(self.counters.items()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return logged

    def read(self, source: str | None = None, start_us: int | None = None,
             end_us: int | None = None, limit: int | None = None,
             descending: bool = False) -> list[LogRecord]:
        """Logged events (of one source), by time; bounds are inclusive."""
        where: list[str] = []
        args: list[str | int] = []
        if source is not None:
            where.append("source = ?")
            args.append(source)
        if start_us is not None:
            where.append("time_us >= ?")
            args.append(start_us)
        if end_us is not None:
            where.append("time_us <= ?")
            args.append(end_us)
        sql = "SELECT seq, source, time_us, fields FROM log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time_us DESC, seq DESC" if descending else " ORDER BY time_us, seq"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [LogRecord(seq, src, t, json.loads(f))
                for seq, src, t, f in self._db.execute(sql, args).fetchall()]

    def close(self) -> None:
        """Close the file."""
        self._db.close()


#: Builds the OPC UA event object of a logged record (the server knows the types).
EventBuilder = Callable[[LogRecord], Event]


class EventLog(Protocol):
    """Where ``LogHistory`` reads a device's events (``SorterState`` or another device's log)."""

    def read(self, source: str | None = None, start_us: int | None = None,
             end_us: int | None = None, limit: int | None = None,
             descending: bool = False) -> list[LogRecord]:
        """Logged events (of one source), by time; bounds are inclusive."""
        ...


class LogHistory(HistoryStorageInterface):
    """OPC UA event history answered from the device's own log.

    Only events are historized (data-change history is not offered). Events
    of one source have strictly increasing times, so a page boundary is a
    time: the continuation point is the time of the first event not returned.
    """

    def __init__(self, state: EventLog, sources: dict[ua.NodeId, str],
                 build: EventBuilder, max_page: int = 1000) -> None:
        super().__init__(max_history_data_response_size=max_page)
        self._state = state
        self._sources = sources
        self._build = build

    async def init(self) -> None:
        """Nothing to prepare: the log is open."""

    async def new_historized_node(self, node_id: ua.NodeId, period: timedelta | None,
                                  count: int = 0) -> None:
        """Data-change history is not offered by this simulator."""

    async def save_node_value(self, node_id: ua.NodeId, datavalue: ua.DataValue) -> None:
        """Data-change history is not offered by this simulator."""

    async def read_node_history(self, node_id: ua.NodeId, start: datetime | None,
                                end: datetime | None, nb_values: int
                                ) -> tuple[list[ua.DataValue], datetime | None]:
        """No data-change history: always empty."""
        return [], None

    async def new_historized_event(self, source_id: ua.NodeId, evtypes: list[Any],
                                   period: timedelta | None, count: int = 0) -> None:
        """Sources are fixed at construction."""

    async def save_event(self, event: Event) -> None:
        """Events are logged by the simulation before they fire, not here."""

    async def read_event_history(self, source_id: ua.NodeId, start: datetime | None,
                                 end: datetime | None, nb_values: int,
                                 evfilter: ua.EventFilter) -> tuple[list[Event], datetime | None]:
        """Events of ``source_id`` between ``start`` and ``end`` (inclusive), paged."""
        source = self._sources.get(source_id)
        if source is None:
            return [], None
        epoch = ua.get_win_epoch()
        start_us = None if start is None or start == epoch else to_us(_aware(start))
        end_us = None if end is None or end == epoch else to_us(_aware(end))
        descending = start_us is None or (end_us is not None and start_us > end_us)
        if descending and start_us is not None and end_us is not None:
            start_us, end_us = end_us, start_us
        page = self.max_history_data_response_size
        limit = min(nb_values, page + 1) if nb_values else page + 1
        records = self._state.read(source, start_us, end_us, limit=limit, descending=descending)
        cont: datetime | None = None
        if len(records) > page and not (nb_values and nb_values <= page):
            cont = to_datetime(records[page].time_us)
            records = records[:page]
        return [self._build(r) for r in records], cont

    async def stop(self) -> None:
        """The simulation closes the state file."""


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
