"""HttpSink against the real WMS simulator over loopback: the upstream HTTP contract.

Every test starts its own ``WmsSimulator`` on 127.0.0.1 with an ephemeral port
and drives ``HttpSink.deliver`` (or a ``Forwarder``) against it; nothing on the
wire is mocked. Backoffs are kept small so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from waiting import ManualClock, wait_until

from buffer.service import Committer, StoreService
from buffer.store import Store
from gateway.config import HttpSinkConfig
from gateway.core.events import Event
from gateway.core.records import Row, SinkDeadLetter
from gateway.forwarder import Forwarder
from gateway.sinks.http import HttpSink, batch_key
from simulators.wms import Faults, WmsSimulator

SITE = "DC-TEST-1"
DELIVER_TIMEOUT = 20.0


# -- helpers -------------------------------------------------------------------------


def make_event(i: int, type: str = "pick", pad: int = 0) -> Event:
    """One canonical event; ``pad`` grows its body by that many bytes."""
    data: dict[str, Any] = {"n": i, "sku": f"SKU-{i:05d}", "qty": 1 + i % 7}
    if pad:
        data["note"] = "x" * pad
    return Event.create(
        site=SITE,
        device="sorter-1",
        type=type,
        source_key=f"{type}-{i}",
        occurred_at=1_700_000_000.0 + i,
        observed_at=1_700_000_000.5 + i,
        data=data,
    )


def make_rows(n: int, *, start: int = 1, type: str = "pick") -> list[Row]:
    """``n`` rows with consecutive seqs starting at ``start``."""
    rows = []
    for k in range(n):
        ev = make_event(start + k, type)
        rows.append(Row(start + k, ev.event_id, ev.type, ev.body))
    return rows


def ids_pattern(ids: list[str]) -> str:
    """A reject pattern matching exactly these event ids."""
    return "^(" + "|".join(ids) + ")$"


def accepted_order(wms: WmsSimulator) -> list[str]:
    """Event ids the WMS accepted, in arrival order."""
    return [rec["event"]["event_id"] for rec in wms.events]


def ingest_requests(wms: WmsSimulator) -> list[dict[str, Any]]:
    """The WMS request log (every request hit the ingest endpoint)."""
    return wms.requests


class RecordingWms(WmsSimulator):
    """The real simulator, also keeping each ingest request's raw headers and body.

    The simulator's own request log has no Content-Type and no body; the
    contract pins both, so this subclass records them before the simulator
    handles the request as usual.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: list[dict[str, Any]] = []

    async def _handle_ingest(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp caches it; the handler reads it again
        self.raw.append(
            {
                "content_type": request.headers.get("Content-Type"),
                "idempotency_key": request.headers.get("Idempotency-Key"),
                "body": body,
            }
        )
        return await super()._handle_ingest(request)


def write_token(path: Path, token: str) -> None:
    """Rewrite a token file as an operator would (small, sync: fine in a test)."""
    path.write_text(token, encoding="utf-8")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "wms.token"
    write_token(path, "good\n")
    return path


@pytest.fixture
async def sinks() -> AsyncIterator[list[HttpSink]]:
    """Sinks created by a test; their HTTP sessions are closed afterwards."""
    made: list[HttpSink] = []
    yield made
    for s in made:
        await s.close()


@pytest.fixture
def make_sink(sinks: list[HttpSink]) -> Callable[..., HttpSink]:
    def make(wms: WmsSimulator, *, id: str = "wms", clock: Callable[[], float] | None = None,
             **overrides: Any) -> HttpSink:
        fields: dict[str, Any] = {
            "id": id,
            "type": "http",
            "url": wms.url,
            "backoff_initial": 0.01,
            "backoff_max": 0.2,
            "timeout": 5.0,
            "batch_max": 100,
        }
        fields.update(overrides)
        sink = HttpSink(HttpSinkConfig(**fields), **({} if clock is None else {"clock": clock}))
        sinks.append(sink)
        return sink

    return make


async def deliver(sink: HttpSink, rows: list[Row]) -> list[SinkDeadLetter]:
    async with asyncio.timeout(DELIVER_TIMEOUT):
        return await sink.deliver(rows)


# -- 2xx ------------------------------------------------------------------------------


async def test_happy_path_body_headers_and_idempotency_key(
    make_sink: Callable[..., HttpSink],
) -> None:
    async with RecordingWms() as wms:
        sink = make_sink(wms)
        batch_a = make_rows(10, start=1)
        batch_b = make_rows(10, start=11)

        assert await deliver(sink, batch_a) == []
        assert await deliver(sink, batch_a) == []  # the same batch re-sent
        assert await deliver(sink, batch_b) == []

        assert len(wms.raw) == 3
        for req, rows in zip(wms.raw, (batch_a, batch_a, batch_b), strict=True):
            assert req["content_type"] == "application/json"
            doc = json.loads(req["body"])
            assert list(doc) == ["events"]
            # Each event is sent as its canonical body, in seq order.
            assert [json.dumps(e, separators=(",", ":")).encode() for e in doc["events"]] == [
                r.body for r in rows
            ]
            assert [e["event_id"] for e in doc["events"]] == [r.event_id for r in rows]

        key_a1, key_a2, key_b = (req["idempotency_key"] for req in wms.raw)
        assert key_a1
        assert key_a1 == key_a2 == batch_key(batch_a)
        assert key_b != key_a1
        assert [r["idempotency_key"] for r in ingest_requests(wms)] == [key_a1, key_a2, key_b]

        stats = wms.stats()
        assert stats["unique"] == 20
        assert stats["duplicates"] == 10
        assert accepted_order(wms) == [r.event_id for r in batch_a + batch_b]
        snap = sink.snapshot()
        assert snap["state"] == "ok"
        assert snap["delivered"] == 30
        assert snap["dead_letters"] == 0


async def test_retry_after_500_resends_identical_body_and_key(
    make_sink: Callable[..., HttpSink],
) -> None:
    async with RecordingWms(faults=Faults(force_status=500, force_status_count=2)) as wms:
        sink = make_sink(wms)
        rows = make_rows(5)
        assert await deliver(sink, rows) == []

        assert [r["status"] for r in ingest_requests(wms)] == [500, 500, 200]
        assert len({r["idempotency_key"] for r in wms.raw}) == 1
        assert len({r["body"] for r in wms.raw}) == 1
        assert wms.accepted_ids() == {r.event_id for r in rows}
        assert sink.stats.retries == 2


async def test_batches_longer_than_batch_max_are_sent_in_order(
    make_sink: Callable[..., HttpSink],
) -> None:
    async with WmsSimulator() as wms:
        sink = make_sink(wms, batch_max=7)
        rows = make_rows(50)
        assert await deliver(sink, rows) == []
        assert [r["events"] for r in ingest_requests(wms)] == [7] * 7 + [1]
        assert accepted_order(wms) == [r.event_id for r in rows]


async def test_partial_rejection_dead_letters_exactly_the_rejected(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(20)
    bad = [rows[3], rows[4], rows[17]]
    pattern = ids_pattern([r.event_id for r in bad])
    async with WmsSimulator(faults=Faults(reject_pattern=pattern, reject_mode="partial")) as wms:
        sink = make_sink(wms)
        dead = await deliver(sink, rows)

        reason = f"event_id matches {pattern!r}"
        assert sorted(dead, key=lambda d: d.seq) == [
            SinkDeadLetter(r.seq, r.event_id, reason) for r in bad
        ]
        good = [r for r in rows if r not in bad]
        assert accepted_order(wms) == [r.event_id for r in good]
        assert len(ingest_requests(wms)) == 1  # partial rejection needs no split
        assert sink.snapshot()["dead_letters"] == 3
        assert sink.snapshot()["delivered"] == 17


async def test_409_is_treated_as_delivered(make_sink: Callable[..., HttpSink]) -> None:
    async with WmsSimulator(faults=Faults(force_status=409, force_status_count=-1)) as wms:
        sink = make_sink(wms)
        assert await deliver(sink, make_rows(8)) == []
        # One request, no retry: a duplicate batch is done.
        assert [r["status"] for r in ingest_requests(wms)] == [409]
        snap = sink.snapshot()
        assert snap["state"] == "ok"
        assert snap["last_status"] == 409
        assert snap["delivered"] == 8


# -- 400 / 422 --------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "status"), [("batch400", 400), ("batch422", 422)])
async def test_whole_batch_refusal_is_split_to_isolate_poison(
    make_sink: Callable[..., HttpSink], mode: str, status: int
) -> None:
    rows = make_rows(64)
    poison = [rows[0], rows[21], rows[22], rows[63]]
    pattern = ids_pattern([r.event_id for r in poison])
    async with WmsSimulator(faults=Faults(reject_pattern=pattern, reject_mode=mode)) as wms:
        sink = make_sink(wms, batch_max=64)
        dead = await deliver(sink, rows)

        assert {(d.seq, d.event_id) for d in dead} == {(r.seq, r.event_id) for r in poison}
        assert len(dead) == len(poison)
        assert all(d.reason.startswith(f"{status}: ") for d in dead)

        good = [r.event_id for r in rows if r not in poison]
        order = accepted_order(wms)
        assert order == good  # every neighbour, once, in seq order
        stats = wms.stats()
        assert stats["unique"] == 60
        assert stats["duplicates"] == 0
        assert stats["received"] == 60  # no accepted request carried a neighbour twice
        assert wms.accepted_ids().isdisjoint(r.event_id for r in poison)
        assert sink.stats.splits > 0
        assert stats["status_counts"].get(str(status), 0) > 0


# -- 401 / 403 --------------------------------------------------------------------------


async def test_401_pauses_without_dead_letters_until_token_file_fixed(
    make_sink: Callable[..., HttpSink], token_file: Path
) -> None:
    write_token(token_file, "bad\n")
    rows = make_rows(30)
    async with WmsSimulator(faults=Faults(token="good")) as wms:
        sink = make_sink(wms, token_file=token_file, batch_max=10)
        task = asyncio.create_task(sink.deliver(rows))
        try:
            await wait_until(lambda: sink.snapshot()["state"] == "paused_auth", what="paused_auth")
            await asyncio.sleep(0.5)
            assert not task.done()  # pending, not dead-lettered
            snap = sink.snapshot()
            assert snap["state"] == "paused_auth"
            assert snap["alert"] and "401" in snap["alert"]
            assert snap["dead_letters"] == 0
            # Paused means paused: one refused request, no hammering.
            assert [(r["status"], r["authorization"]) for r in ingest_requests(wms)] == [
                (401, "Bearer bad")
            ]

            write_token(token_file, "good\n")
            async with asyncio.timeout(DELIVER_TIMEOUT):
                dead = await task
        finally:
            task.cancel()
        assert dead == []
        assert wms.accepted_ids() == {r.event_id for r in rows}
        assert accepted_order(wms) == [r.event_id for r in rows]
        assert all(r["authorization"] == "Bearer good" for r in ingest_requests(wms)[1:])
        snap = sink.snapshot()
        assert snap["state"] == "ok"
        assert snap["alert"] is None


async def test_403_pauses_until_token_file_changes(
    make_sink: Callable[..., HttpSink], token_file: Path
) -> None:
    rows = make_rows(12)
    faults = Faults(token="good", force_status=403, force_status_count=-1)
    async with WmsSimulator(faults=faults) as wms:
        sink = make_sink(wms, token_file=token_file)
        task = asyncio.create_task(sink.deliver(rows))
        try:
            await wait_until(lambda: sink.snapshot()["state"] == "paused_auth", what="paused_auth")
            await asyncio.sleep(0.5)
            assert not task.done()
            snap = sink.snapshot()
            assert snap["alert"] and "403" in snap["alert"]
            assert snap["dead_letters"] == 0
            assert [r["status"] for r in ingest_requests(wms)] == [403]

            # The upstream grants the permission again, the operator re-issues the token.
            await wms.update_faults({"force_status": None})
            write_token(token_file, "good\n\n")
            async with asyncio.timeout(DELIVER_TIMEOUT):
                dead = await task
        finally:
            task.cancel()
        assert dead == []
        assert accepted_order(wms) == [r.event_id for r in rows]
        assert sink.snapshot()["state"] == "ok"


async def test_403_retries_every_auth_retry_without_token_change(
    make_sink: Callable[..., HttpSink], token_file: Path
) -> None:
    rows = make_rows(6)
    faults = Faults(token="good", force_status=403, force_status_count=2)
    async with WmsSimulator(faults=faults) as wms:
        sink = make_sink(wms, token_file=token_file, auth_retry=0.3)
        assert await deliver(sink, rows) == []

        assert [r["status"] for r in ingest_requests(wms)] == [403, 403, 200]
        reqs = ingest_requests(wms)
        # Each retry waited for auth_retry (polled in 0.2 s steps).
        assert reqs[1]["t"] - reqs[0]["t"] >= 0.3
        assert reqs[2]["t"] - reqs[1]["t"] >= 0.3
        assert wms.accepted_ids() == {r.event_id for r in rows}


# -- 413 ------------------------------------------------------------------------------------


def body_size(rows: list[Row]) -> int:
    return len(b'{"events":[' + b",".join(r.body for r in rows) + b"]}")


async def test_413_halves_the_batch_until_it_fits(make_sink: Callable[..., HttpSink]) -> None:
    rows = make_rows(64)
    fits_8 = max(body_size(rows[i : i + 8]) for i in range(0, 64, 8))
    too_big_16 = min(body_size(rows[i : i + 16]) for i in range(0, 64, 16))
    assert fits_8 < too_big_16
    async with WmsSimulator(faults=Faults(max_body_bytes=fits_8)) as wms:
        sink = make_sink(wms, batch_max=64)
        assert await deliver(sink, rows) == []

        assert sink.batch_limit == 8  # halved three times: 64 -> 32 -> 16 -> 8
        assert sink.snapshot()["batch_limit"] == sink.batch_limit
        assert accepted_order(wms) == [r.event_id for r in rows]
        stats = wms.stats()
        assert stats["unique"] == 64
        assert stats["duplicates"] == 0
        assert stats["status_counts"]["413"] == 3
        assert all(r["bytes"] <= fits_8 for r in ingest_requests(wms) if r["status"] == 200)


async def test_413_single_event_too_large_is_dead_lettered(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(10)
    big_ev = make_event(999, pad=5000)
    big = Row(11, big_ev.event_id, big_ev.type, big_ev.body)
    tail = make_rows(5, start=12)
    batch = [*rows, big, *tail]
    async with WmsSimulator(faults=Faults(max_body_bytes=4000)) as wms:
        sink = make_sink(wms, batch_max=64)
        dead = await deliver(sink, batch)

        assert [(d.seq, d.event_id) for d in dead] == [(11, big.event_id)]
        assert dead[0].reason.startswith("413")
        assert accepted_order(wms) == [r.event_id for r in rows + tail]
        assert wms.stats()["duplicates"] == 0

        # Isolating the big event took the batch limit down to 1; that was the
        # event's size, not the batch's: later batches must not go one by one.
        assert sink.batch_limit > 1
        before = len(ingest_requests(wms))
        more = make_rows(40, start=100)
        assert await deliver(sink, more) == []
        assert len(ingest_requests(wms)) - before <= 10  # 40 -> 20 -> 10 per request
        assert accepted_order(wms)[-40:] == [r.event_id for r in more]


# -- 429 / 503 with Retry-After ---------------------------------------------------------


async def test_429_retry_after_seconds_holds_back_requests(
    make_sink: Callable[..., HttpSink],
) -> None:
    faults = Faults(retry_after_status=429, retry_after="1", retry_after_count=1)
    clock = ManualClock()  # stands still: the wait the sink computed is read off exactly
    async with WmsSimulator(faults=faults) as wms:
        sink = make_sink(wms, clock=clock)
        rows = make_rows(10)
        task = asyncio.create_task(sink.deliver(rows))
        try:
            await wait_until(lambda: sink.snapshot()["state"] == "backoff", what="backoff")
            assert [r["status"] for r in ingest_requests(wms)] == [429]
            # max(backoff, Retry-After): backoff_max is 0.2 s, so the 1 s of the header.
            assert sink.snapshot()["retry_in_s"] == 1.0
            async with asyncio.timeout(DELIVER_TIMEOUT):
                assert await task == []
        finally:
            task.cancel()

        reqs = ingest_requests(wms)
        assert [r["status"] for r in reqs] == [429, 200]
        t_429 = reqs[0]["t"]
        assert not [r for r in reqs[1:] if r["t"] < t_429 + 1.0]
        assert wms.accepted_ids() == {r.event_id for r in rows}


async def test_503_retry_after_http_date_holds_back_requests(
    make_sink: Callable[..., HttpSink],
) -> None:
    target = datetime.now(UTC) + timedelta(seconds=2)
    retry_after = email.utils.format_datetime(target, usegmt=True)
    # The HTTP-date drops the fraction of a second, so the date the upstream
    # names lies 1-2 s ahead: the gap before the next request is at least ~1 s,
    # and exactly: no request before the named wall-clock second.
    named = email.utils.parsedate_to_datetime(retry_after).timestamp()
    faults = Faults(retry_after_status=503, retry_after=retry_after, retry_after_count=1)
    clock = ManualClock()  # stands still: ``not_before - clock()`` is the wait computed
    async with WmsSimulator(faults=faults) as wms:
        sink = make_sink(wms, clock=clock)
        rows = make_rows(10)
        assert await deliver(sink, rows) == []

        reqs = ingest_requests(wms)
        assert [r["status"] for r in reqs] == [503, 200]
        assert reqs[1]["t"] - reqs[0]["t"] >= 0.95
        assert reqs[1]["wall"] >= named - 0.02
        # Counted from the response's Date (whole seconds, not before the date the test
        # started in), so never more than the 2 s the test asked for.
        assert sink.not_before - clock() <= 2.0
        assert wms.accepted_ids() == {r.event_id for r in rows}


async def test_retry_after_is_capped_by_retry_after_max(
    make_sink: Callable[..., HttpSink],
) -> None:
    faults = Faults(retry_after_status=429, retry_after="3600", retry_after_count=1)
    async with WmsSimulator(faults=faults) as wms:
        clock = ManualClock()  # stands still: ``not_before - clock()`` is the wait computed
        sink = make_sink(wms, retry_after_max=0.3, clock=clock)
        assert await deliver(sink, make_rows(3)) == []
        reqs = ingest_requests(wms)
        assert [r["status"] for r in reqs] == [429, 200]
        assert sink.not_before - clock() == pytest.approx(0.3)  # the cap, not the hour asked
        assert reqs[1]["t"] - reqs[0]["t"] >= 0.3


# -- other 5xx, connection errors -------------------------------------------------------


async def test_30_percent_5xx_delivers_everything_once(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(2000)
    async with WmsSimulator(faults=Faults(error_rate=0.3, seed=7)) as wms:
        sink = make_sink(wms, batch_max=100)
        dead: list[SinkDeadLetter] = []
        for i in range(0, len(rows), 250):
            dead += await deliver(sink, rows[i : i + 250])

        assert dead == []
        stats = wms.stats()
        assert stats["unique"] == 2000
        assert stats["duplicates"] == 0
        n500 = stats["status_counts"].get("500", 0)
        assert n500 > 0
        assert sink.stats.retries == n500
        assert accepted_order(wms) == [r.event_id for r in rows]


async def test_outage_then_recovery(make_sink: Callable[..., HttpSink]) -> None:
    async with WmsSimulator() as wms:
        sink = make_sink(wms)
        rows = make_rows(40)
        await wms.set_outage(True)
        task = asyncio.create_task(sink.deliver(rows))
        states: list[str] = []
        try:
            await wait_until(lambda: sink.snapshot()["state"] != "ok", what="a non-ok state")
            for _ in range(25):
                await asyncio.sleep(0.02)
                states.append(sink.snapshot()["state"])
            snap = sink.snapshot()
            assert snap["failures"] > 0
            assert snap["last_error"]
            assert not task.done()
            assert ingest_requests(wms) == []  # nothing reached the WMS

            await wms.set_outage(False)
            async with asyncio.timeout(DELIVER_TIMEOUT):
                assert await task == []
        finally:
            task.cancel()
        assert states
        assert all(s in ("backoff", "failing") for s in states)
        assert accepted_order(wms) == [r.event_id for r in rows]
        snap = sink.snapshot()
        assert snap["state"] == "ok"
        assert snap["last_error"] is None


# -- forwarder + store ----------------------------------------------------------------------


async def test_forwarders_move_the_store_to_two_http_sinks(
    make_sink: Callable[..., HttpSink], tmp_path: Path
) -> None:
    events = [make_event(i, "exception" if i % 5 == 0 else "pick") for i in range(1000)]
    exceptions = [e for e in events if e.type == "exception"]
    refused = exceptions[7]
    service = StoreService(lambda: Store(tmp_path / "buffer.db", synchronous="NORMAL"))
    store = await service.open()
    committer = Committer(service)
    tasks: list[asyncio.Task[None]] = []
    faults_exc = Faults(reject_pattern=ids_pattern([refused.event_id]))
    try:
        async with (
            WmsSimulator(faults=Faults(error_rate=0.1, seed=3)) as wms,
            WmsSimulator(faults=faults_exc) as wms_exc,
        ):
            sink = make_sink(wms, id="wms", batch_max=64)
            sink_exc = make_sink(wms_exc, id="exceptions", routes=["exception"], batch_max=16)
            cursors = await service.call(store.register_sinks, [sink.id, sink_exc.id])
            tasks.append(asyncio.create_task(committer.run(), name="committer"))
            forwarders = [Forwarder(s, service, cursors[s.id]) for s in (sink, sink_exc)]
            tasks += [asyncio.create_task(f.run(), name=f"fwd-{f.sink.id}") for f in forwarders]

            # Appended while the forwarders run: they follow the store as it grows.
            await asyncio.gather(
                *(committer.append(events[i : i + 50]) for i in range(0, 1000, 50))
            )
            top = (await service.call(store.stats))["last_seq"]
            assert top == 1000

            await wait_until(
                lambda: all(f.cursor == top for f in forwarders), timeout=30, what="cursors"
            )
            stats = await service.call(store.stats)
            dead = await service.call(store.dead_letters, sink="exceptions")

        assert stats["cursors"] == {"wms": 1000, "exceptions": 1000}
        # Both cursors passed every row: the store keeps none of them.
        assert stats["events"] == 0

        wms_stats = wms.stats()
        assert wms_stats["unique"] == 1000
        assert wms_stats["duplicates"] == 0
        assert accepted_order(wms) == [e.event_id for e in events]

        got_exc = [rec["event"] for rec in wms_exc.events]
        assert {ev["type"] for ev in got_exc} == {"exception"}
        assert [ev["event_id"] for ev in got_exc] == [
            e.event_id for e in exceptions if e is not refused
        ]
        assert wms_exc.stats()["duplicates"] == 0
        assert [(d.sink, d.event_id, d.type) for d in dead] == [
            ("exceptions", refused.event_id, "exception")
        ]
        assert forwarders[1].dead_letters == 1
        assert forwarders[0].events_delivered == 1000
        assert forwarders[1].events_delivered == len(exceptions) - 1
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await service.close()
