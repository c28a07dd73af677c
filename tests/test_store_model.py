"""The real ``buffer.store.Store`` against a plain-Python model of it.

Hypothesis drives a state machine through appends (with re-sent events and
ingest dead letters), sink reads and cursor moves (with dead letters),
replays, discards, sink changes and crashes, on a real SQLite file. After
every step the live rows, cursors, dead letters, counters, byte accounting
and the highest ``seq`` handed out must equal the model's, and the contracts
in the module docstring of ``buffer/store.py`` are checked on what the
database holds, independently of the model:

* a business or exception event whose unit was committed is in the store
  after ``append`` returns, and leaves it only once every cursor passed it;
* ``seq`` only grows, also after the table was emptied or the file reopened;
* rows of units that were not committed are not stored (the committed units
  are a prefix);
* telemetry that vanished undelivered is exactly what the eviction and drop
  counters say;
* ``append`` never takes the store over ``max_bytes``;
* dead letters never count against ``max_bytes``; ingest dead letters are cut
  to ``dead_letter_payload_bytes`` and evicted oldest first to keep all dead
  letters within ``dead_letter_max_bytes``; sink dead letters are never
  evicted.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from buffer.store import ROW_OVERHEAD, AppendResult, OpenReport, Store, StoreError
from gateway.core.events import Event, Priority
from gateway.core.records import IngestDeadLetter, SinkDeadLetter

SINKS = ("a", "b", "c")
TYPES = ("pick", "pack", "move", "scan", "exception", "telemetry", "device_status")
TELEMETRY = int(Priority.TELEMETRY)

Record = Event | IngestDeadLetter


@dataclass(frozen=True)
class MRow:
    seq: int
    event_id: str
    type: str
    priority: int
    only_sink: str | None
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body) + ROW_OVERHEAD


@dataclass(frozen=True)
class MDead:
    id: int
    kind: str
    sink: str | None
    event_id: str | None
    reason: str
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body) + ROW_OVERHEAD


def size(record: Record) -> int:
    """Bytes taken from ``max_bytes``: dead letters have their own budget."""
    return len(record.body) + ROW_OVERHEAD if isinstance(record, Event) else 0


#: Small, so that the model's ingest payloads (up to 304 bytes) are cut sometimes.
PAYLOAD_LIMIT = 256


def is_telemetry(record: Record) -> bool:
    return isinstance(record, Event) and record.priority == Priority.TELEMETRY


# A record to append: a new event (type, padding), a re-sent earlier event, or
# a source message that never became an event.
records = st.one_of(
    st.tuples(st.just("new"), st.sampled_from(TYPES), st.integers(0, 600)),
    st.tuples(st.just("new"), st.sampled_from(TYPES), st.integers(0, 600)),
    st.tuples(st.just("again"), st.just(""), st.integers(0, 10**6)),
    st.tuples(st.just("ingest"), st.just(""), st.integers(0, 300)),
)
units_st = st.lists(st.lists(records, min_size=1, max_size=4), min_size=1, max_size=4)
routes_st = st.one_of(st.none(), st.frozensets(st.sampled_from(TYPES), max_size=4))


#: Small, so that ids leave the store's redelivery window during a run.
DEDUP_WINDOW = 12


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.path = self.dir / "buffer.db"
        self.store: Store | None = None
        self.max_bytes = 0
        self.rows: dict[int, MRow] = {}  # live rows by seq
        self.cursors: dict[str, int] = {}
        self.dead: dict[int, MDead] = {}
        self.next_dead_id = 1
        self.top = 0  # highest seq handed out so far
        self.counters: Counter[str] = Counter()
        self.known: list[Event] = []  # every event generated, for re-sending
        self.next_key = 0
        # Business/exception rows the store accepted and not yet seen delivered.
        self.precious: dict[int, str] = {}
        # Ids appended lately: the store's redelivery window (invariant 5).
        self.recent: list[str] = []
        # The reconciliation tallies, all days together: (type, sink, name) -> count.
        self.tallies: Counter[tuple[str, str, str]] = Counter()
        self.dead_types: dict[int, str] = {}  # sink dead letter id -> event type

    # -- helpers ------------------------------------------------------------------

    @property
    def db(self) -> Store:
        assert self.store is not None
        return self.store

    def used(self) -> int:
        return sum(r.size for r in self.rows.values())

    def dead_used(self) -> int:
        return sum(d.size for d in self.dead.values())

    @property
    def dead_budget(self) -> int:
        return self.max_bytes // 8

    def make(self, kind: str, type_: str, n: int) -> Record:
        if kind == "again" and self.known:
            return self.known[n % len(self.known)]
        self.next_key += 1
        key = self.next_key
        if kind == "ingest":
            return IngestDeadLetter(
                device=f"scanner-{key % 2}",
                reason="unparseable payload",
                payload=b"raw:" + bytes(n),
                context={"key": key},
            )
        event = Event.create(
            site="DC-MODEL",
            device=f"dev-{key % 3}",
            type=type_ or "pick",
            source_key=str(key),
            occurred_at=1_790_000_000.0 + key,
            observed_at=1_790_000_000.0 + key,
            data={"key": key, "pad": "x" * n},
        )
        self.known.append(event)
        return event

    def db_rows(self) -> dict[int, MRow]:
        return {
            r[0]: MRow(*r)
            for r in self.db._conn.execute(
                "SELECT seq, event_id, type, priority, only_sink, body FROM events ORDER BY seq"
            )
        }

    def allowance(self) -> int:
        """Bytes that enter without a capacity check: replayed rows."""
        return sum(r.size for r in self.rows.values() if r.only_sink is not None)

    def prune(self) -> int:
        if not self.cursors:
            return 0
        floor = min(self.cursors.values())
        gone = [s for s in self.rows if s <= floor]
        for s in gone:
            del self.rows[s]
        return len(gone)

    # -- the model of append ----------------------------------------------------------

    def evict(self, rows: dict[int, MRow], pending: list[Event], need: int) -> tuple[int, int]:
        """Rows every sink passed go first, then undelivered telemetry oldest-first,
        then telemetry queued earlier in the same append."""
        freed = lost = 0
        if self.cursors:
            floor = min(self.cursors.values())
            for s in [s for s in rows if s <= floor]:
                freed += rows.pop(s).size
        for s in sorted(rows):
            if freed >= need:
                break
            if rows[s].priority == TELEMETRY:
                freed += rows.pop(s).size
                lost += 1
        while freed < need:
            i = next((i for i, e in enumerate(pending) if is_telemetry(e)), None)
            if i is None:
                break
            freed += size(pending.pop(i))
            lost += 1
        return freed, lost

    def model_append(
        self, units: list[list[Record]]
    ) -> tuple[AppendResult, dict[int, MRow], list[IngestDeadLetter], int]:
        result = AppendResult()
        rows = dict(self.rows)
        used = self.used()
        pending: list[Event] = []
        ingest: list[IngestDeadLetter] = []
        for unit in units:
            need = sum(size(r) for r in unit)
            if used + need > self.max_bytes:
                freed, lost = self.evict(rows, pending, used + need - self.max_bytes)
                used -= freed
                result.evicted_telemetry += lost
            if used + need > self.max_bytes:
                kept = [r for r in unit if not is_telemetry(r)]
                need = sum(size(r) for r in kept)
                if used + need > self.max_bytes:
                    result.full = True
                    result.full_reason = "capacity"
                    break
                result.dropped_telemetry += len(unit) - len(kept)
                unit = kept
            for r in unit:
                if isinstance(r, Event):
                    pending.append(r)
                else:
                    ingest.append(r)
            used += need
            result.units_committed += 1
        recent = set(self.recent)
        top = self.top
        for e in pending:
            if e.event_id in recent:
                result.duplicates += 1
                continue
            top += 1
            rows[top] = MRow(top, e.event_id, e.type, int(e.priority), None, e.body)
            recent.add(e.event_id)
            result.inserted += 1
            result.inserted_by_type[e.type] += 1
        result.dead_letters = len(ingest)
        if ingest:
            # New dead letters count too: a budget smaller than one may evict it at once.
            total = self.dead_used() + sum(
                min(len(r.payload), PAYLOAD_LIMIT) + ROW_OVERHEAD for r in ingest
            )
            # Oldest first: the stored ingest dead letters by id, then the new ones.
            sizes = [d.size for _, d in sorted(self.dead.items()) if d.kind == "ingest"]
            sizes += [min(len(r.payload), PAYLOAD_LIMIT) + ROW_OVERHEAD for r in ingest]
            i = 0
            while total > self.dead_budget and i < len(sizes):
                total -= sizes[i]
                i += 1
            result.evicted_ingest_dead_letters = i
        return result, rows, ingest, top

    def remember(self, ids: list[str]) -> None:
        self.recent = (self.recent + ids)[-DEDUP_WINDOW:]

    def reseed_recent(self) -> None:
        """What the store remembers after opening: the newest rows' ids."""
        live = [r.event_id for _, r in sorted(self.rows.items()) if r.only_sink is None]
        self.recent = live[-DEDUP_WINDOW:]

    # -- rules ------------------------------------------------------------------------

    @initialize(
        sinks=st.lists(st.sampled_from(SINKS), min_size=1, max_size=3, unique=True),
        max_bytes=st.sampled_from([2 * 1024**3, 20_000, 8_000]),
    )
    def start(self, sinks: list[str], max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.store = Store(self.path, max_bytes=max_bytes, synchronous="NORMAL",
                           dead_letter_payload_bytes=PAYLOAD_LIMIT,
                           dedup_window=DEDUP_WINDOW)
        assert self.store.open_report == OpenReport()
        self.cursors = dict.fromkeys(sinks, 0)
        assert self.store.register_sinks(sinks) == self.cursors

    @rule(plan=units_st)
    def append(self, plan: list[list[tuple[str, str, int]]]) -> None:
        units = [[self.make(*r) for r in unit] for unit in plan]
        recent_before = set(self.recent)
        expected, rows, ingest, top = self.model_append(units)
        before = self.db_rows()
        used_before = self.db.used_bytes
        floor = min(self.cursors.values())

        result = self.db.append(units)

        assert result == expected
        for name in ("evicted_telemetry", "dropped_telemetry", "duplicates", "full"):
            if getattr(result, name):
                event(f"append: {name}")
        if not before and self.top and result.inserted:
            event("append: into an emptied table")
        after = self.db_rows()
        committed = [r for unit in units[: result.units_committed] for r in unit]
        events = [r for r in committed if isinstance(r, Event)]
        live_ids = {r.event_id for r in after.values() if r.only_sink is None}
        # Accepted business and exception events are in the store now, unless the
        # store had them lately (a redelivery, counted as a duplicate).
        for e in events:
            if not is_telemetry(e) and e.event_id not in recent_before:
                assert e.event_id in live_ids, e
        # New rows: fresh seqs above everything handed out, only from committed units.
        new = [s for s in after if s not in before]
        assert len(new) == result.inserted
        assert all(s > self.top for s in new)
        assert {after[s].event_id for s in new} <= {e.event_id for e in events}
        # What vanished: rows every sink had, or telemetry counted as lost.
        vanished = [before[s] for s in before if s not in after]
        assert all(r.priority == TELEMETRY or r.seq <= floor for r in vanished)
        lost_stored = sum(1 for r in vanished if r.seq > floor)
        lost_pending = len(events) - result.inserted - result.duplicates
        assert result.evicted_telemetry + result.dropped_telemetry == lost_stored + lost_pending
        # Appending never takes the store over capacity.
        assert self.db.used_bytes <= max(self.max_bytes, used_before)

        self.rows = rows
        self.top = top
        self.remember([after[s].event_id for s in sorted(new)])
        for r in ingest:
            self.dead[self.next_dead_id] = MDead(
                self.next_dead_id, "ingest", None, None, r.reason, r.payload[:PAYLOAD_LIMIT]
            )
            self.next_dead_id += 1
        for i in sorted(i for i, d in self.dead.items() if d.kind == "ingest")[
            : result.evicted_ingest_dead_letters
        ]:
            del self.dead[i]
        if result.evicted_ingest_dead_letters:
            event("append: evicted ingest dead letters")
        self.counters.update(
            evicted_ingest_dead_letters=result.evicted_ingest_dead_letters,
            evicted_telemetry=result.evicted_telemetry,
            dropped_telemetry=result.dropped_telemetry,
            ingest_dead_letters=result.dead_letters,
            duplicate_events=result.duplicates,
        )
        for s in new:
            if after[s].priority != TELEMETRY:
                self.precious[s] = after[s].event_id
            self.tallies[(after[s].type, "", "accepted")] += 1
        if result.dead_letters:
            self.tallies[("(ingest)", "", "ingest_dead_letters")] += result.dead_letters

    @rule(data=st.data(), limit=st.integers(1, 20), routes=routes_st)
    def read_and_advance(
        self, data: st.DataObject, limit: int, routes: frozenset[str] | None
    ) -> None:
        sink = data.draw(st.sampled_from(sorted(self.cursors)), label="sink")
        cursor = self.cursors[sink]
        rows, scanned = self.db.read(sink, cursor, limit, routes)

        visible = [
            r
            for s, r in sorted(self.rows.items())
            if s > cursor and (routes is None or r.type in routes) and r.only_sink in (None, sink)
        ]
        got = [(r.seq, r.event_id, r.type, r.body) for r in rows]
        assert got == [(r.seq, r.event_id, r.type, r.body) for r in visible[:limit]]
        assert scanned >= cursor
        assert not rows or scanned >= rows[-1].seq
        # Nothing the sink should get lies at or below ``scanned`` unreturned.
        assert [r.seq for r in visible if r.seq <= scanned] == [r.seq for r in rows]
        if len(rows) < limit:  # a sink that routes little still moves past the rest
            assert scanned >= max(self.rows, default=cursor)

        how = data.draw(st.sampled_from(["all", "part", "none"]), label="advance")
        if how == "none":
            return
        to = (
            scanned
            if how == "all" or not rows
            else rows[data.draw(st.integers(0, len(rows) - 1))].seq
        )
        rejected = data.draw(
            st.lists(st.sampled_from([r for r in rows if r.seq <= to] or [None]), unique=True),
            label="rejected",
        )
        dls = [SinkDeadLetter(r.seq, r.event_id, f"422 bad {r.type}") for r in rejected if r]
        took = Counter(r.type for r in rows if r.seq <= to and r not in rejected)

        deleted = self.db.advance(sink, to, dls, took)
        if dls:
            event("advance: with sink dead letters")

        for dl in dls:
            self.dead[self.next_dead_id] = MDead(
                self.next_dead_id, "sink", sink, dl.event_id, dl.reason, self.rows[dl.seq].body
            )
            self.dead_types[self.next_dead_id] = self.rows[dl.seq].type
            self.next_dead_id += 1
        self.counters.update(sink_dead_letters=len(dls))
        for r in rejected:
            if r:
                self.tallies[(r.type, sink, "rejected")] += 1
        for type_, n in took.items():
            self.tallies[(type_, sink, "delivered")] += n
        self.cursors[sink] = to
        assert deleted == self.prune()

    @precondition(lambda self: any(c > 0 for c in self.cursors.values()))
    @rule(data=st.data())
    def advance_backwards_is_refused(self, data: st.DataObject) -> None:
        sink = data.draw(st.sampled_from(sorted(s for s, c in self.cursors.items() if c > 0)))
        to = data.draw(st.integers(0, self.cursors[sink] - 1))
        dls = [SinkDeadLetter(r.seq, r.event_id, "late") for r in list(self.rows.values())[:1]]
        try:
            self.db.advance(sink, to, dls)
        except StoreError as err:
            assert "may not move back" in str(err)
        else:
            raise AssertionError("a cursor moved backwards")

    @rule(sinks=st.lists(st.sampled_from(SINKS), min_size=1, max_size=3, unique=True))
    def register_sinks(self, sinks: list[str]) -> None:
        start = min(self.rows, default=1) - 1
        self.cursors = {s: self.cursors.get(s, start) for s in sinks}
        assert self.db.register_sinks(sinks) == self.cursors

    @rule(how=st.sampled_from(["close", "drop", "mid-transaction"]), register=st.booleans())
    def crash_and_reopen(self, how: str, register: bool) -> None:
        conn = self.db._conn
        if how == "close":
            self.db.close()
        else:
            if how == "mid-transaction":  # killed half-way through a write
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM cursors")
                conn.execute("DELETE FROM events")
                conn.execute(
                    "INSERT INTO events(event_id, type, priority, device, created, body)"
                    " VALUES ('torn', 'pick', 0, 'dev-0', 0, x'00')"
                )
            conn.close()  # no commit, no checkpoint
        self.store = Store(self.path, max_bytes=self.max_bytes, synchronous="NORMAL",
                           dead_letter_payload_bytes=PAYLOAD_LIMIT,
                           dedup_window=DEDUP_WINDOW)
        self.reseed_recent()
        assert self.store.open_report == OpenReport()
        assert self.store.used_bytes == self.used()
        if register:  # what the daemon does at start; nothing changes
            assert self.store.register_sinks(self.cursors) == self.cursors

    @precondition(lambda self: any(d.kind == "sink" for d in self.dead.values()))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        sink_ids = [i for i, d in self.dead.items() if d.kind == "sink"]
        ids = data.draw(st.lists(st.sampled_from(sink_ids), min_size=1, unique=True))
        before = self.db_rows()

        assert self.db.replay(ids) == len(ids)

        after = self.db_rows()
        new = sorted(s for s in after if s not in before)
        assert new == list(range(self.top + 1, self.top + 1 + len(ids)))
        assert all(before[s] == after[s] for s in before)  # nothing else changed
        got = sorted((after[s].event_id, after[s].only_sink, after[s].body) for s in new)
        want = sorted((self.dead[i].event_id, self.dead[i].sink, self.dead[i].body) for i in ids)
        assert got == want
        assert all(after[s].priority == int(Priority.BUSINESS) for s in new)
        for s in new:
            self.rows[s] = after[s]
            self.precious[s] = after[s].event_id
        for i in ids:
            self.tallies[(self.dead_types[i], self.dead[i].sink or "", "replayed")] += 1
            del self.dead[i]
        self.top += len(ids)
        self.counters.update(replayed_dead_letters=len(ids))

    @precondition(lambda self: any(d.kind == "ingest" for d in self.dead.values()))
    @rule(data=st.data())
    def replay_of_ingest_is_refused(self, data: st.DataObject) -> None:
        ingest = [i for i, d in self.dead.items() if d.kind == "ingest"]
        ids = data.draw(st.lists(st.sampled_from(sorted(self.dead)), min_size=1, unique=True))
        if not set(ids) & set(ingest):
            ids.append(ingest[0])
        try:
            self.db.replay(ids)
        except StoreError as err:
            assert "ingest dead letters" in str(err)
        else:
            raise AssertionError("an ingest dead letter was replayed")

    @precondition(lambda self: bool(self.dead))
    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.dead)), min_size=1, unique=True))
        assert self.db.discard(ids) == len(ids)
        for i in ids:
            d = self.dead.pop(i)
            type_ = self.dead_types[i] if d.kind == "sink" else "(ingest)"
            self.tallies[(type_, d.sink or "", "discarded")] += 1
        self.counters.update(discarded_dead_letters=len(ids))

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def cursors_match(self) -> None:
        assert self.db.cursors() == self.cursors

    @invariant()
    def rows_match(self) -> None:
        assert self.db_rows() == self.rows
        live = self.db._conn.execute("SELECT seq, event_id FROM events").fetchall()
        assert sorted(live) == sorted((s, r.event_id) for s, r in self.rows.items())

    @invariant()
    def seq_never_goes_back(self) -> None:
        row = self.db._conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
        ).fetchone()
        assert (0 if row is None else row[0]) == self.top
        assert max(self.rows, default=0) <= self.top

    @invariant()
    def dead_letters_match(self) -> None:
        got = [
            (d.id, d.kind, d.sink, d.event_id, d.reason, d.body)
            for d in self.db.dead_letters(limit=100_000)
        ]
        want = [(d.id, d.kind, d.sink, d.event_id, d.reason, d.body) for d in self.dead.values()]
        assert got == sorted(want)

    @invariant()
    def tallies_match(self) -> None:
        got = Counter({(t, s, name): n for t, s, name, n in self.db._conn.execute(
            "SELECT type, sink, name, SUM(n) FROM tallies GROUP BY type, sink, name")})
        assert got == +self.tallies
        # The audit trail has a row per replay and discard, their counts add up.
        trail = self.db.audit_trail(limit=100_000)
        for action in ("replay", "discard"):
            done = sum(a["count"] for a in trail if a["action"] == action)
            assert done == sum(n for (_, _, name), n in self.tallies.items()
                               if name == f"{action}ed")

    @invariant()
    def counters_match(self) -> None:
        assert self.db.counters() == {k: v for k, v in self.counters.items() if v}

    @invariant()
    def bytes_are_accounted(self) -> None:
        assert self.db.used_bytes == self.used()
        assert self.db._measure_used() == self.db.used_bytes
        assert self.db.used_bytes <= self.max_bytes + self.allowance()
        assert self.db.dead_letter_bytes == self.dead_used() == self.db._measure_dead()
        ingest = sum(d.size for d in self.dead.values() if d.kind == "ingest")
        assert ingest <= self.dead_budget

    @invariant()
    def precious_rows_leave_only_when_delivered(self) -> None:
        live = {r[0] for r in self.db._conn.execute("SELECT seq FROM events")}
        floor = min(self.db.cursors().values())
        for seq in [s for s in self.precious if s not in live]:
            assert seq <= floor, f"business row {seq} gone before every sink had it"
            del self.precious[seq]

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=50, deadline=None)
TestStoreModel = StoreMachine.TestCase
