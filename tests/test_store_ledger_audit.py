"""The store's audit trail, discard archive, daily tallies and container trace,
on real store files (the clock is the only thing faked)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from buffer.deadletters import DeadLetterFilter
from buffer.ledger import day_of
from buffer.store import SCHEMA_VERSION, Store, StoreError
from gateway.core.events import Event
from gateway.core.records import IngestDeadLetter, RecognizerNote, SinkDeadLetter
from gateway.forwarder import delivered_types

DAY0 = 1_795_428_902.0  # 2026-11-23 10:15:02 UTC
DAY = 86400.0


class Clock:
    def __init__(self, t: float = DAY0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def event(i: int, type_: str = "scan", code_: str | None = None) -> Event:
    return Event.create(site="DC-EAST-1", device=f"scan-{i % 2 + 1}", type=type_,
                        source_key=f"read:{i}", occurred_at=DAY0 + i, observed_at=DAY0 + i,
                        data={"code": code_ or f"TOTE-{i:06d}"}, correlation_id=f"code:{i}")


def code(i: int) -> str:
    return f"TOTE-{i:06d}"


def deliver(store: Store, sink: str, reject: set[str] | None = None,
            routes: frozenset[str] | None = None) -> None:
    """Deliver everything after ``sink``'s cursor as its forwarder would; the sink
    rejects the events whose code is in ``reject``."""
    rows, scanned = store.read(sink, store.cursors()[sink], 10_000, routes)
    dead = [SinkDeadLetter(r.seq, r.event_id, "422: unknown container")
            for r in rows if reject and json.loads(r.body)["data"]["code"] in reject]
    store.advance(sink, scanned, dead, delivered_types(rows, dead))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(path: Path, clock: Clock, **kw: object) -> Store:
    return Store(path, clock=clock, synchronous="NORMAL", **kw)  # type: ignore[arg-type]


def test_a_version_1_file_opens_keeps_its_rows_and_gains_the_new_tables(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
            type TEXT NOT NULL, priority INTEGER NOT NULL, device TEXT NOT NULL,
            only_sink TEXT, created REAL NOT NULL, body BLOB NOT NULL);
        CREATE TABLE cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated REAL NOT NULL);
        CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('sink', 'ingest')), sink TEXT, device TEXT,
            event_id TEXT, type TEXT, reason TEXT NOT NULL, body BLOB NOT NULL, context BLOB,
            created REAL NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        PRAGMA user_version = 1;
    """)
    ev = event(1)
    conn.execute("INSERT INTO events(event_id, type, priority, device, created, body)"
                 " VALUES (?, 'scan', 0, 'scan-1', ?, ?)", (ev.event_id, DAY0, ev.body))
    conn.execute("INSERT INTO cursors VALUES ('wms', 0, ?)", (DAY0,))
    conn.execute("INSERT INTO dead_letters(kind, sink, device, event_id, type, reason, body,"
                 " created) VALUES ('sink', 'wms', 'scan-1', 'x', 'scan', '422: no', ?, ?)",
                 (ev.body, DAY0))
    conn.commit()
    conn.close()

    store = Store(path, clock=Clock(DAY0 + 10))
    try:
        assert store.stats()["events"] == 1
        assert [d.reason for d in store.dead_letters()] == ["422: no"]
        assert store.discard([1], who="alice", via="test") == 1
        assert [(a["who"], a["action"], a["ids"]) for a in store.audit_trail()] == [
            ("alice", "discard", [1])]
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"audit", "discarded", "tallies", "events", "dead_letters"} <= tables
        assert conn.execute("SELECT COUNT(*) FROM discarded").fetchone()[0] == 1
    finally:
        conn.close()


def test_replay_and_discard_are_audited_and_discards_archived_until_retention(
        tmp_path: Path, clock: Clock) -> None:
    store = make(tmp_path / "b.db", clock, archive_retention_s=7 * DAY)
    try:
        store.register_sinks(["wms"])
        store.append([[event(i)] for i in range(10)])
        deliver(store, "wms", reject={code(i) for i in (1, 2, 3, 5)})
        ids = [d.id for d in store.dead_letters()]
        assert len(ids) == 4
        assert store.replay([ids[0]], who="alice", via="api") == 1
        clock.t += 60
        n = store.discard_matching(DeadLetterFilter(sink="wms", reason="422"), who="bob",
                                   via="cli")
        assert n == 3
        assert store.dead_letters() == []
        trail = store.audit_trail()
        assert [(a["who"], a["via"], a["action"], a["count"], a["ids"]) for a in trail] == [
            ("bob", "cli", "discard", 3, ids[1:]), ("alice", "api", "replay", 1, [ids[0]])]
        assert trail[0]["filter"] == {"sink": "wms", "reason": "422"}
        assert trail[0]["at"] == DAY0 + 60
        archived = store.archived()
        assert sorted(a["id"] for a in archived) == ids[1:]
        assert all(a["audit_id"] == trail[0]["id"] and a["body_bytes"] > 0 for a in archived)
        # Not yet past the retention: still archived, at a cursor move or a prune.
        clock.t += 7 * DAY - 120
        assert store.prune_archive() == 0
        clock.t += 121
        assert store.prune_archive() == 3
        assert store.archived() == []
        assert len(store.audit_trail()) == 2  # the trail itself is never pruned
    finally:
        store.close()


def test_ingest_dead_letters_cannot_be_replayed_by_filter(tmp_path: Path, clock: Clock) -> None:
    store = make(tmp_path / "b.db", clock)
    try:
        store.append([[IngestDeadLetter("scan-1", "not_json: x", b"{bad")]])
        with pytest.raises(StoreError, match="cannot be replayed"):
            store.replay_matching(DeadLetterFilter(kind="ingest"))
        assert store.replay_matching(DeadLetterFilter()) == 0  # only sink ones are chosen
        assert store.audit_trail() == []  # nothing done, nothing recorded
        assert store.count_dead_letters(DeadLetterFilter(device="scan-1")) == 1
    finally:
        store.close()


def test_filters_match_listing_and_all_matching_alike(tmp_path: Path, clock: Clock) -> None:
    store = make(tmp_path / "b.db", clock)
    try:
        store.register_sinks(["wms", "erp"])
        store.append([[event(i, "pick" if i % 3 == 0 else "scan")] for i in range(30)])
        deliver(store, "wms", reject={code(i) for i in range(0, 30, 2)})
        deliver(store, "erp", reject={code(7)})
        for flt in (DeadLetterFilter(sink="erp"), DeadLetterFilter(type="pick"),
                    DeadLetterFilter(device="scan-1", sink="wms"), DeadLetterFilter(reason="422"),
                    DeadLetterFilter(reason="nothing like it")):
            listed = store.dead_letters(sink=flt.sink, type=flt.type, device=flt.device,
                                        reason=flt.reason, limit=1000)
            assert store.count_dead_letters(flt) == len(listed)
            assert all((flt.sink in (None, d.sink)) and (flt.type in (None, d.type))
                       and (flt.device in (None, d.device)) for d in listed)
        n = store.count_dead_letters(DeadLetterFilter(type="pick"))
        assert n == 5  # 0, 6, 12, 18, 24 rejected by wms
        assert store.replay_matching(DeadLetterFilter(type="pick")) == n
        assert store.count_dead_letters(DeadLetterFilter(type="pick")) == 0
        assert store.count_dead_letters(DeadLetterFilter()) == 16 - n
    finally:
        store.close()


def test_reconciliation_balances_and_survives_reopen(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "b.db"
    store = make(path, clock, retention_s=3600)
    store.register_sinks(["wms", "erp"])
    routes = {"wms": frozenset({"scan", "pick"}), "erp": None}
    store.append([[event(i, "pick" if i % 4 == 0 else "scan")] for i in range(40)])
    # A redelivery is absorbed: not accepted twice.
    store.append([[event(3)]])
    deliver(store, "wms", reject={code(i) for i in (1, 5, 8)}, routes=routes["wms"])
    ids = [d.id for d in store.dead_letters()]
    store.replay(ids[:2])
    store.discard(ids[2:])
    deliver(store, "wms", routes=routes["wms"])
    store.append([[event(i, "pick") for i in range(40, 45)]])  # pending for both sinks
    store.close()

    store = make(path, clock, retention_s=3600)  # a restart: the counts come from the file
    try:
        doc = store.reconciliation(day_of(DAY0), routes)
        by = {r["type"]: r for r in doc["types"]}
        assert by["scan"]["accepted"] == 30 and by["pick"]["accepted"] == 15
        wms = {t: by[t]["sinks"]["wms"] for t in by}
        assert wms["scan"] == {"delivered": 30, "rejected": 2, "replayed": 2,
                               "discarded": 0, "pending": 0}
        assert wms["pick"] == {"delivered": 9, "rejected": 1, "replayed": 0,
                               "discarded": 1, "pending": 5}
        erp = {t: by[t]["sinks"]["erp"] for t in by}
        assert erp["scan"]["pending"] == 30 and erp["pick"]["pending"] == 15
        for t, row in by.items():
            for sink, c in row["sinks"].items():
                # Every accepted event is delivered, dead-lettered or still pending;
                # a replay puts one back in the queue.
                assert row["accepted"] + c["replayed"] == (
                    c["delivered"] + c["rejected"] + c["pending"]), (t, sink)
        assert doc["totals"]["accepted"] == 45
        # Another day has its own (empty) counts; pending is by the day of acceptance.
        other = store.reconciliation(day_of(DAY0 + DAY), routes)
        assert other["types"] == [] and other["totals"]["pending"] == 0
    finally:
        store.close()


def test_container_trace_says_where_each_event_is(tmp_path: Path, clock: Clock) -> None:
    store = make(tmp_path / "b.db", clock, retention_s=3600)
    try:
        store.register_sinks(["wms", "erp"])
        routes = {"wms": frozenset({"scan"}), "erp": None}
        store.append([[event(1, code_="TOTE-7")], [event(2, code_="TOTE-70")],
                      [event(3, "pick", code_="TOTE-7")], [event(4, code_="TOTE-7")]])
        # wms rejects the scans of TOTE-7 (events 1 and 4); replay event 4's only.
        deliver(store, "wms", reject={"TOTE-7"}, routes=routes["wms"])
        dls = store.dead_letters()
        assert len(dls) == 2
        store.replay([dls[1].id])
        deliver(store, "erp")
        doc = store.container_trace("TOTE-7", routes=routes)
        got = [(e["seq"], e["type"], e["where"]) for e in doc["events"]]
        assert got == [
            (1, "scan", {"wms": f"dead-lettered (id {dls[0].id})", "erp": "delivered"}),
            (3, "pick", {"wms": "not routed", "erp": "delivered"}),
            (4, "scan", {"wms": "replayed (seq 5)", "erp": "delivered"}),
            (5, "scan", {"wms": "pending"}),
        ]
        assert all(e["data"]["code"] == "TOTE-7" for e in doc["events"])
        assert store.container_trace("TOTE-70", routes=routes)["events"][0]["seq"] == 2
        assert store.container_trace("TOTE", routes=routes)["events"] == []
    finally:
        store.close()


def test_a_salvaged_store_keeps_its_audit_trail_and_tallies(tmp_path: Path,
                                                            clock: Clock) -> None:
    path = tmp_path / "b.db"
    store = make(path, clock)
    store.register_sinks(["wms"])
    store.append([[event(i)] for i in range(300)])
    deliver(store, "wms", reject={code(1), code(2)})
    ids = [d.id for d in store.dead_letters()]
    store.replay(ids[:1], who="alice")
    store.discard(ids[1:], who="bob")
    deliver(store, "wms")
    store.append([[event(i)] for i in range(300, 600)])  # pending, and lost with the file
    store.append([[RecognizerNote("amr-fleet", "vehicle:M/AMR-1", b"carrying")]])
    trail, archived = store.audit_trail(), store.archived()
    report = store.reconciliation(day_of(DAY0))
    size = int(store._conn.execute("PRAGMA page_size").fetchone()[0])
    root = store._conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    with path.open("r+b") as f:  # the events table's root page: the file is corrupt
        f.seek((root - 1) * size)
        f.write(b"\xa5" * size)

    store = make(path, clock)
    try:
        assert store.open_report.corrupt
        assert store.audit_trail() == trail
        assert store.notes("amr-fleet") == {"vehicle:M/AMR-1": b"carrying"}
        assert store.archived() == archived
        after = store.reconciliation(day_of(DAY0))["types"]
        assert report["types"][0]["sinks"]["wms"]["pending"] == 300
        for row in (*after, *report["types"]):
            row["sinks"]["wms"].pop("pending")  # events in the damaged table are lost
        assert after == report["types"]
        assert after[0]["accepted"] == 600
        clock.t += 1
        store.append([[IngestDeadLetter("scan-1", "not_json: x", b"{")]])
        (dl,) = store.dead_letters(kind="ingest")
        store.discard([dl.id], who="carol")
        assert store.audit_trail()[0]["id"] > trail[0]["id"]  # ids keep growing
    finally:
        store.close()
