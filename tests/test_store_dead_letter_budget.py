"""Dead letters have their own bounded budget and never block business events."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
import pytest
import structlog
from pydantic import ValidationError

from buffer.store import ROW_OVERHEAD, Store
from gateway.config import StoreConfig
from gateway.core.events import Event
from gateway.core.records import IngestDeadLetter, SinkDeadLetter

MiB = 1024**2
PREFIX = 4096


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "buffer.db"


def ev(key: int | str, *, pad: int = 0) -> Event:
    return Event.create(
        site="DC-DL", device="sorter-1", type="pick", source_key=str(key),
        occurred_at=1_790_000_000.0, observed_at=1_790_000_000.0,
        data={"key": str(key), "pad": "x" * pad},
    )


def oversized(n: int, size: int = 10_000_000) -> IngestDeadLetter:
    payload = n.to_bytes(4, "big") + b"\x5a" * (size - 4)
    return IngestDeadLetter("scanner-1", "too_large", payload, {"topic": "scan/1", "n": n})


def stored_bytes(store: Store, id_: int) -> int:
    """What one dead letter really occupies in the file: payload plus context."""
    row = store._conn.execute(
        "SELECT LENGTH(body) + COALESCE(LENGTH(context), 0) FROM dead_letters WHERE id = ?",
        (id_,),
    ).fetchone()
    return int(row[0])


def test_an_oversized_payload_is_kept_as_a_prefix_with_size_and_hash(db: Path) -> None:
    store = Store(db)
    big = oversized(1)
    small = IngestDeadLetter("scanner-1", "not_json", b"{oops", {"topic": "scan/1"})
    store.append([[big], [small]])

    d_big, d_small = store.dead_letters()
    assert d_big.body == big.payload[:PREFIX]
    assert d_big.context == {
        "topic": "scan/1", "n": 1, "truncated": True, "original_size": 10_000_000,
        "sha256": hashlib.sha256(big.payload).hexdigest(),
    }
    assert d_big.reason == "too_large" and d_big.device == "scanner-1"
    # A payload within the limit is kept byte for byte, context untouched.
    assert (d_small.body, d_small.context) == (b"{oops", {"topic": "scan/1"})
    kept = stored_bytes(store, d_big.id)
    print(f"\nbytes kept for a 10 MB payload: {kept} (payload prefix {len(d_big.body)})")
    assert kept < PREFIX + 256
    assert store.dead_letter_bytes == PREFIX + 5 + 2 * ROW_OVERHEAD == store._measure_dead()
    store.close()


def test_the_prefix_length_is_configurable(db: Path) -> None:
    store = Store(db, dead_letter_payload_bytes=300)
    store.append([[oversized(1, size=1000)]])
    (d,) = store.dead_letters()
    assert len(d.body) == 300 and d.context["original_size"] == 1000
    store.close()
    with pytest.raises(ValueError, match="dead_letter_payload_bytes must be >= 0"):
        Store(db, dead_letter_payload_bytes=-1)


def test_oldest_ingest_dead_letters_are_evicted_to_the_budget_and_counted(db: Path) -> None:
    each = PREFIX + ROW_OVERHEAD
    store = Store(db, dead_letter_max_bytes=10 * each)
    with structlog.testing.capture_logs() as logs:
        for n in range(25):
            result = store.append([[oversized(n, size=20_000)]])
            assert result.units_committed == 1
    kept = store.dead_letters(limit=1000)
    assert [d.context["n"] for d in kept] == list(range(15, 25))  # the newest ten
    assert store.counters()["evicted_ingest_dead_letters"] == 15
    assert store.counters()["ingest_dead_letters"] == 25
    assert store.dead_letter_bytes == 10 * each == store._measure_dead()
    evicted_logs = [e for e in logs if e["event"] == "ingest_dead_letters_evicted"]
    assert evicted_logs and evicted_logs[0]["evicted"] == 1  # throttled, one line a minute
    store.close()

    store = Store(db, dead_letter_max_bytes=10 * each)  # counters and bytes survive reopen
    assert store.counters()["evicted_ingest_dead_letters"] == 15
    assert store.dead_letter_bytes == 10 * each
    store.append([[oversized(99, size=20_000)]])
    assert store.counters()["evicted_ingest_dead_letters"] == 16
    assert store.dead_letters()[0].context["n"] == 16
    store.close()


def test_sink_dead_letters_are_kept_over_budget_and_reported(db: Path) -> None:
    store = Store(db, dead_letter_max_bytes=20_000)
    store.register_sinks(["wms"])
    store.append([[oversized(1, size=5000)]])  # an ingest dead letter, evicted below
    store.append([[ev(i, pad=3000)] for i in range(10)])
    rows, scanned = store.read("wms", 0, 100)
    with structlog.testing.capture_logs() as logs:
        store.advance("wms", scanned, [SinkDeadLetter(r.seq, r.event_id, "422") for r in rows])
    assert [e["event"] for e in logs].count("dead_letters_over_budget") == 1
    assert store.dead_letters_over_budget
    assert len(store.dead_letters(kind="sink")) == 10  # all kept, none evicted
    assert store.stats()["dead_letter_bytes"] > store.stats()["dead_letter_max_bytes"]

    # Sink dead letters alone overrun the budget, so the next ingest dead letter
    # evicts the older one and then itself; a sink dead letter is never touched.
    store.append([[oversized(2, size=100)]])
    assert len(store.dead_letters(kind="sink")) == 10
    assert store.dead_letters(kind="ingest") == []
    assert store.counters()["evicted_ingest_dead_letters"] == 2
    # Business events are still admitted: dead letters do not count against max_bytes.
    assert store.append([[ev(f"after{i}")] for i in range(5)]).inserted == 5

    store.discard([d.id for d in store.dead_letters(kind="sink")])
    assert not store.dead_letters_over_budget
    store.close()


def test_a_hundred_oversized_messages_do_not_block_business_events(db: Path) -> None:
    max_bytes = 64 * MiB
    store = Store(db, max_bytes=max_bytes, synchronous="NORMAL")
    store.register_sinks(["wms"])
    for n in range(100):
        assert store.append([[oversized(n)]]).units_committed == 1
    assert len(store.dead_letters(limit=1000)) == 100
    assert store.dead_letter_bytes == 100 * (PREFIX + ROW_OVERHEAD)

    body = len(ev(0, pad=8000).body) + ROW_OVERHEAD
    admitted = 0
    while True:
        result = store.append([[ev(admitted + k, pad=8000)] for k in range(500)])
        admitted += result.units_committed
        if result.full:
            break
    print(f"\nbusiness events admitted after 100 oversized messages: {admitted}")
    assert result.full_reason == "capacity"
    # All of max_bytes went to business events (a few bytes of body size vary with the key).
    assert admitted >= max_bytes // (body + 8)
    assert store.used_bytes <= max_bytes
    store.close()


def test_the_context_of_a_cut_payload_is_valid_msgpack(db: Path) -> None:
    store = Store(db)
    store.append([[IngestDeadLetter("plc-1", "too_large", b"\x00" * 70_000)]])
    raw = store._conn.execute("SELECT context FROM dead_letters").fetchone()[0]
    ctx = msgpack.unpackb(raw)
    assert ctx["original_size"] == 70_000 and ctx["truncated"] is True
    store.close()


def test_store_config_keys_have_defaults_and_clear_errors(tmp_path: Path) -> None:
    cfg = StoreConfig(path=tmp_path / "b.db")
    assert (cfg.dead_letter_max_bytes, cfg.dead_letter_payload_bytes) == (None, 4096)
    assert (cfg.min_free_bytes, cfg.reserve_bytes) == (64 * MiB, 8 * MiB)
    cfg = StoreConfig(path=tmp_path / "b.db", dead_letter_max_bytes="16 MiB",
                      min_free_bytes=0, reserve_bytes="0")
    assert (cfg.dead_letter_max_bytes, cfg.min_free_bytes, cfg.reserve_bytes) == (16 * MiB, 0, 0)
    with pytest.raises(ValidationError, match="dead_letter_payload_bytes"):
        StoreConfig(path=tmp_path / "b.db", dead_letter_payload_bytes=10)
    with pytest.raises(ValidationError, match=r"min_free_bytes[\s\S]*expected a size"):
        StoreConfig(path=tmp_path / "b.db", min_free_bytes="lots")
