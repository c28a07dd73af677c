"""HttpSink against hostile upstreams: replies it cannot interpret never end the process.

Each test runs a real aiohttp server on 127.0.0.1 (ephemeral port) whose
replies the test scripts request by request: malformed ``rejected`` lists,
landing pages, non-JSON, huge and endless bodies, redirects, skewed
Retry-After dates. After the scripted faults the server behaves (accepts
the batch and records its events), so every test can check that the batch
was re-sent, delivered exactly once and never dead-lettered.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog
from aiohttp import web
from waiting import ManualClock, wait_until

from buffer.service import Committer, StoreService
from buffer.store import Store
from gateway.config import HttpSinkConfig
from gateway.core.records import Row
from gateway.core.snapshot import CommitterSnapshot, GatewaySnapshot, SinkSnapshot, StoreSnapshot
from gateway.forwarder import Forwarder
from gateway.metrics import render_metrics
from gateway.sinks.http import HttpSink, parse_retry_after
from tests.test_sink_http import make_event, make_rows

DELIVER_TIMEOUT = 15.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- a scriptable upstream ---------------------------------------------------------------


class HostileWms:
    """An ingest endpoint on loopback that answers with ``plan`` first, then properly.

    ``plan`` is consumed one handler per request to the ingest path; once it is
    empty the endpoint accepts the batch (``{}``) and appends its event ids to
    ``accepted``. ``routes`` answers other paths (landing pages, redirect
    targets). ``requests`` logs every request the server saw.
    """

    def __init__(self) -> None:
        self.plan: list[Handler] = []
        self.routes: dict[str, Handler] = {}
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[str] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/ingest"

    async def __aenter__(self) -> HostileWms:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append({
            "method": request.method,
            "path": request.path,
            "key": request.headers.get("Idempotency-Key"),
            "authorization": request.headers.get("Authorization"),
            "accept_encoding": request.headers.get("Accept-Encoding"),
            "body": body,
            "t": time.monotonic(),
        })
        if request.path in self.routes:
            return await self.routes[request.path](request)
        if request.path == "/ingest" and self.plan:
            return await self.plan.pop(0)(request)
        return await self.accept(request)

    async def accept(self, request: web.Request) -> web.StreamResponse:
        """A well-behaved ingest: take the batch, answer ``{}``."""
        doc = json.loads(await request.read())
        self.accepted += [e["event_id"] for e in doc["events"]]
        return web.json_response({})

    def ingest_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/ingest"]


def reply(status: int, body: bytes = b"", content_type: str = "application/json",
          **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type,
                            headers=headers)
    return handler


def redirect(status: int, location: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})
    return handler


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def sinks() -> AsyncIterator[list[HttpSink]]:
    made: list[HttpSink] = []
    yield made
    for s in made:
        await s.close()


@pytest.fixture
def make_sink(sinks: list[HttpSink]) -> Callable[..., HttpSink]:
    def make(url: str, *, wall: Callable[[], float] = time.time,
             clock: Callable[[], float] = time.monotonic, **overrides: Any) -> HttpSink:
        fields: dict[str, Any] = {
            "id": "wms", "type": "http", "url": url,
            "backoff_initial": 0.01, "backoff_max": 0.05, "timeout": 3.0,
            "batch_max": 100, "pause_after_failures": 3, "paused_retry": 0.2,
        }
        fields.update(overrides)
        sink = HttpSink(HttpSinkConfig(**fields), wall=wall, clock=clock)
        sinks.append(sink)
        return sink
    return make


async def deliver(sink: HttpSink, rows: list[Row]) -> list[Any]:
    async with asyncio.timeout(DELIVER_TIMEOUT):
        return await sink.deliver(rows)


def assert_delivered_once(wms: HostileWms, sink: HttpSink, rows: list[Row]) -> None:
    """The batch went through exactly once, with one key throughout, nothing dead."""
    assert wms.accepted == [r.event_id for r in rows]
    assert len({r["key"] for r in wms.ingest_requests()}) == 1
    snap = sink.snapshot()
    assert snap["delivered"] == len(rows)
    assert snap["dead_letters"] == 0
    assert snap["state"] == "ok"
    assert snap["alert"] is None


# -- 2xx the sink cannot interpret ------------------------------------------------------------

BAD_2XX = {
    "event_id_list": (b'{"rejected":[{"event_id":["x"]}]}', "application/json"),
    "event_id_object": (b'{"rejected":[{"event_id":{"a":1}}]}', "application/json"),
    "event_id_number": (b'{"rejected":[{"event_id":123}]}', "application/json"),
    "event_id_missing": (b'{"rejected":[{"reason":"bad"}]}', "application/json"),
    "entry_not_object": (b'{"rejected":["e1","e2"]}', "application/json"),
    "rejected_string": (b'{"rejected":"all"}', "application/json"),
    "rejected_object": (b'{"rejected":{"event_id":"x"}}', "application/json"),
    "html_landing_page": (b"<!doctype html><html><body>Welcome! Please log in</body></html>",
                          "text/html"),
    "not_utf8": (b"\xff\xfe\x00garbage\x80", "application/octet-stream"),
    "truncated_json": (b'{"rejected": [', "application/json"),
    "json_array": (b"[]", "application/json"),
    "json_string": (b'"ok"', "application/json"),
    "json_null": (b"null", "application/json"),
    "deeply_nested": (b"[" * 200_000, "application/json"),
}


@pytest.mark.parametrize("case", sorted(BAD_2XX))
async def test_uninterpretable_2xx_is_retried_not_delivered_nor_dead_lettered(
    make_sink: Callable[..., HttpSink], case: str
) -> None:
    body, ctype = BAD_2XX[case]
    rows = make_rows(5)
    async with HostileWms() as wms:
        wms.plan = [reply(200, body, ctype), reply(200, body, ctype)]
        sink = make_sink(wms.url)
        assert await deliver(sink, rows) == []

        # Two uninterpretable replies, then the same batch again, accepted once.
        assert len(wms.ingest_requests()) == 3
        assert_delivered_once(wms, sink, rows)
        assert sink.snapshot()["protocol_errors"] == 2


async def test_compressed_reply_that_was_not_asked_for_is_a_sink_error(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(3)
    async with HostileWms() as wms:
        wms.plan = [reply(200, gzip.compress(b"{}"), **{"Content-Encoding": "gzip"})]
        sink = make_sink(wms.url)
        assert await deliver(sink, rows) == []
        # The sink asks for no encoding (so nothing inflates past the cap).
        assert [r["accept_encoding"] for r in wms.ingest_requests()] == [None, None]
        assert len(wms.ingest_requests()) == 2
        assert_delivered_once(wms, sink, rows)
        assert sink.snapshot()["protocol_errors"] == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b""), (204, b""), (200, b"  \n"), (200, b"{}"), (202, b'{"rejected":[]}'),
     (200, b'{"rejected":null}'), (200, b'{"accepted":5,"extra":[1,2]}')],
)
async def test_interpretable_2xx_is_one_delivery(
    make_sink: Callable[..., HttpSink], status: int, body: bytes
) -> None:
    rows = make_rows(5)
    async with HostileWms() as wms:
        async def ok(request: web.Request) -> web.StreamResponse:
            await wms.accept(request)
            return web.Response(status=status, body=body or None)
        wms.plan = [ok]
        sink = make_sink(wms.url)
        assert await deliver(sink, rows) == []
        assert len(wms.ingest_requests()) == 1
        assert_delivered_once(wms, sink, rows)
        assert sink.snapshot()["protocol_errors"] == 0


async def test_rejected_reasons_are_coerced_and_truncated_unknown_ids_ignored(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(6)
    rejected = [
        {"event_id": rows[1].event_id, "reason": {"code": 7, "field": "sku"}},
        {"event_id": rows[2].event_id, "reason": "x" * 5000},
        {"event_id": rows[2].event_id, "reason": "listed twice"},
        {"event_id": "not-an-event-of-this-batch", "reason": "?"},
        {"event_id": rows[4].event_id},
        {"event_id": rows[5].event_id, "reason": 42},
    ]
    async with HostileWms() as wms:
        wms.plan = [reply(200, json.dumps({"rejected": rejected}).encode())]
        sink = make_sink(wms.url)
        with structlog.testing.capture_logs() as logs:
            dead = await deliver(sink, rows)

        assert [(d.seq, d.event_id, d.reason) for d in dead] == [
            (rows[1].seq, rows[1].event_id, '{"code":7,"field":"sku"}'),
            (rows[2].seq, rows[2].event_id, "x" * 300),
            (rows[4].seq, rows[4].event_id, "rejected by upstream"),
            (rows[5].seq, rows[5].event_id, "42"),
        ]
        snap = sink.snapshot()
        assert snap["unknown_rejects"] == 1
        assert snap["dead_letters"] == 4
        assert snap["delivered"] == 2
        assert len(wms.ingest_requests()) == 1
        assert [e["event"] for e in logs if e["event"] == "sink_reject_unknown_ids"] == [
            "sink_reject_unknown_ids"]


# -- pause after N identical failures ----------------------------------------------------------


def metrics_of(sink: HttpSink) -> str:
    """The Prometheus text the status API would serve for a gateway with this one sink."""
    snap = SinkSnapshot.build(sink.id, sink.snapshot(), None, 0)
    return render_metrics(GatewaySnapshot(
        site="DC-1", pid=1, uptime_s=0.0, ready=True, alerts=(), devices={},
        sinks={sink.id: snap}, store=StoreSnapshot(), committer=CommitterSnapshot(),
        tasks={}))



async def test_pauses_with_alert_after_identical_failures_and_resumes_on_good_reply(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(10)
    html = b"<html><head><title>Corporate SSO</title></head><body>Sign in</body></html>"
    async with HostileWms() as wms:
        wms.plan = [reply(200, html, "text/html") for _ in range(6)]
        sink = make_sink(wms.url, pause_after_failures=3, paused_retry=0.3)
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(sink.deliver(rows))
            try:
                await wait_until(lambda: sink.snapshot()["state"] == "paused_protocol",
                               what="paused_protocol")
                # Paused at exactly the third identical reply.
                assert len(wms.ingest_requests()) == 3
                snap = sink.snapshot()
                assert "not JSON" in snap["alert"]
                assert "Corporate SSO" in snap["alert"]  # a short sample of the reply
                assert snap["dead_letters"] == 0
                assert 'wh_sink_paused{sink="wms"} 1' in metrics_of(sink)
                assert not task.done()
                async with asyncio.timeout(DELIVER_TIMEOUT):
                    assert await task == []
            finally:
                task.cancel()

        assert 'wh_sink_paused{sink="wms"} 0' in metrics_of(sink)
        reqs = wms.ingest_requests()
        assert len(reqs) == 7
        # While paused, one probe per paused_retry, not the (tiny) backoff.
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(reqs[2:])]
        assert all(g >= 0.3 for g in gaps), gaps
        assert_delivered_once(wms, sink, rows)
        assert sink.snapshot()["protocol_errors"] == 6
        events = [e["event"] for e in logs]
        # Six identical failures: one throttled log line, one pause, one recovery.
        assert events.count("sink_protocol_error") == 1
        assert events.count("sink_paused_protocol") == 1
        assert events.count("sink_available") == 1


async def test_forwarder_survives_malformed_rejected_and_delivers_everything_once(
    make_sink: Callable[..., HttpSink], tmp_path: Path
) -> None:
    events = [make_event(i) for i in range(40)]
    service = StoreService(lambda: Store(tmp_path / "buffer.db", synchronous="NORMAL"))
    store = await service.open()
    committer = Committer(service)
    tasks: list[asyncio.Task[None]] = []
    try:
        async with HostileWms() as wms:
            wms.plan = [reply(200, b'{"rejected":[{"event_id":["x"]}]}') for _ in range(4)]
            sink = make_sink(wms.url, batch_max=100)
            cursors = await service.call(store.register_sinks, [sink.id])
            tasks.append(asyncio.create_task(committer.run(), name="committer"))
            fwd = Forwarder(sink, service, cursors[sink.id])
            fwd_task = asyncio.create_task(fwd.run(), name="fwd")
            tasks.append(fwd_task)
            await committer.append(events)
            await wait_until(lambda: fwd.cursor == 40 or fwd_task.done(), timeout=DELIVER_TIMEOUT,
                           what="cursor at the top")
            assert not fwd_task.done()  # nothing escaped the forwarder
            stats = await service.call(store.stats)
            dead = await service.call(store.dead_letters, sink="wms")

            assert wms.accepted == [e.event_id for e in events]
            assert len(wms.ingest_requests()) == 5
            assert stats["cursors"] == {"wms": 40}
            assert dead == []
            assert fwd.dead_letters == 0
            assert fwd.events_delivered == 40
            assert sink.snapshot()["state"] == "ok"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await service.close()


# -- huge and endless bodies --------------------------------------------------------------------

GIB = 1024**3


def streamed_body(total: int, *, declare_length: bool, sent: list[int]) -> Handler:
    """A 200 whose body is ``total`` generated bytes, streamed; counts what went out."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/json"
        if declare_length:
            resp.content_length = total
        await resp.prepare(request)
        chunk = b'{"rejected":[' + b" " * (64 * 1024 - 13)
        try:
            while sent[0] < total:
                await resp.write(chunk)
                sent[0] += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what this test wants
        return resp
    return handler


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content_length"])
async def test_1gib_body_is_cut_at_the_cap_with_small_memory_growth(
    make_sink: Callable[..., HttpSink], declare_length: bool
) -> None:
    rows = make_rows(5)
    sent = [0]
    proc = psutil.Process()
    async with HostileWms() as wms:
        wms.plan = [streamed_body(GIB, declare_length=declare_length, sent=sent)]
        sink = make_sink(wms.url, max_response_bytes="1 MiB")
        rss_before = proc.memory_info().rss
        assert await deliver(sink, rows) == []
        growth = proc.memory_info().rss - rss_before

        assert growth < 50 * 1024**2, growth
        assert sent[0] < 256 * 1024**2  # the client stopped reading long before 1 GiB
        assert len(wms.ingest_requests()) == 2
        assert_delivered_once(wms, sink, rows)
        assert sink.snapshot()["protocol_errors"] == 1


async def test_reply_over_max_response_bytes_pauses_naming_the_limit(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(3)
    big = json.dumps({"rejected": [], "pad": "y" * 5000}).encode()
    async with HostileWms() as wms:
        wms.plan = [reply(200, big) for _ in range(3)]
        sink = make_sink(wms.url, max_response_bytes=4096, paused_retry=0.2)
        task = asyncio.create_task(sink.deliver(rows))
        try:
            await wait_until(lambda: sink.snapshot()["state"] == "paused_protocol",
                           what="paused_protocol")
            assert "max_response_bytes (4096 bytes)" in sink.snapshot()["alert"]
            async with asyncio.timeout(DELIVER_TIMEOUT):
                assert await task == []
        finally:
            task.cancel()
        assert_delivered_once(wms, sink, rows)


async def test_endless_slow_body_ends_at_timeout_and_the_batch_is_resent(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(4)
    hung_up = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b" ")
                await asyncio.sleep(0.05)
        except (ConnectionError, RuntimeError):
            hung_up.set()
        return resp

    async with HostileWms() as wms:
        wms.plan = [endless]
        sink = make_sink(wms.url, timeout=0.5)
        assert await deliver(sink, rows) == []
        async with asyncio.timeout(5):
            await hung_up.wait()  # the client, not the server, ended the exchange
        assert len(wms.ingest_requests()) == 2
        assert_delivered_once(wms, sink, rows)
        assert sink.stats.failures == 1


# -- redirects -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "follow"),
    [(301, False), (302, False), (303, False), (307, False), (308, False),
     (301, True), (302, True), (303, True)],
)
async def test_redirect_is_a_sink_error_whose_alert_names_the_location(
    make_sink: Callable[..., HttpSink], status: int, follow: bool
) -> None:
    rows = make_rows(5)
    async with HostileWms() as wms:
        landing = f"{wms.base}/landing"
        wms.routes["/landing"] = reply(200, b"<html>Welcome</html>", "text/html")
        wms.plan = [redirect(status, landing) for _ in range(3)]
        sink = make_sink(wms.url, follow_redirects=follow)
        task = asyncio.create_task(sink.deliver(rows))
        try:
            await wait_until(lambda: sink.snapshot()["state"] == "paused_protocol",
                           what="paused_protocol")
            alert = sink.snapshot()["alert"]
            assert landing in alert
            assert f"HTTP {status}" in alert
            async with asyncio.timeout(DELIVER_TIMEOUT):
                assert await task == []
        finally:
            task.cancel()
        # The landing page never saw a request: the POST was not turned into a GET.
        assert [r["path"] for r in wms.requests] == ["/ingest"] * 4
        assert_delivered_once(wms, sink, rows)
        assert sink.snapshot()["status_counts"] == {str(status): 3, "200": 1}


@pytest.mark.parametrize("status", [307, 308])
async def test_307_308_followed_with_same_method_body_and_key_when_enabled(
    make_sink: Callable[..., HttpSink], tmp_path: Path, status: int
) -> None:
    rows = make_rows(5)
    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    async with HostileWms() as wms:
        wms.plan = [redirect(status, "/v2/ingest")]  # relative Location
        wms.routes["/v2/ingest"] = wms.accept
        sink = make_sink(wms.url, follow_redirects=True, token_file=token)
        assert await deliver(sink, rows) == []

        first, second = wms.requests
        assert (first["path"], second["path"]) == ("/ingest", "/v2/ingest")
        assert second["method"] == "POST"
        assert second["body"] == first["body"]
        assert second["key"] == first["key"]
        assert second["authorization"] == "Bearer s3cret"  # same host
        assert wms.accepted == [r.event_id for r in rows]
        snap = sink.snapshot()
        assert snap["delivered"] == 5
        assert snap["protocol_errors"] == 0


async def test_redirect_chain_longer_than_three_hops_is_a_sink_error(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(2)
    async with HostileWms() as wms:
        for n in range(1, 10):
            wms.routes[f"/hop/{n}"] = redirect(307, f"/hop/{n + 1}")
        wms.plan = [redirect(307, "/hop/1")]
        sink = make_sink(wms.url, follow_redirects=True)
        with structlog.testing.capture_logs() as logs:
            assert await deliver(sink, rows) == []
        # ingest + 3 hops, the 4th redirect refused; then the resend is accepted.
        assert [r["path"] for r in wms.requests] == [
            "/ingest", "/hop/1", "/hop/2", "/hop/3", "/ingest"]
        errors = [e for e in logs if e["event"] == "sink_protocol_error"]
        assert len(errors) == 1
        assert "more than 3 redirects" in errors[0]["error"]
        assert "/hop/4" in errors[0]["error"]
        assert_delivered_once(wms, sink, rows)


# -- Retry-After ----------------------------------------------------------------------------------


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


async def test_retry_after_date_is_relative_to_the_response_date_not_our_clock(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(3)
    skew = [-3600.0]  # our wall clock is an hour behind the upstream's

    def wall() -> float:
        return time.time() + skew[0]

    async def busy(request: web.Request) -> web.StreamResponse:
        now = time.time()
        return web.Response(status=503, headers={
            "Retry-After": http_date(now + 2), "Date": http_date(now)})

    async with HostileWms() as wms:
        wms.plan = [busy]
        clock = ManualClock()  # stands still: the wait the sink computed is read off exactly
        sink = make_sink(wms.url, wall=wall, clock=clock, retry_after_max=60.0)
        task = asyncio.create_task(sink.deliver(rows))
        try:
            await wait_until(lambda: sink.snapshot()["state"] == "backoff", what="backoff")
            first = sink.snapshot()["retry_in_s"]
            assert first == 2.0  # Retry-After minus Date; not an hour, not the cap
            skew[0] = -86_400.0  # the wall clock steps back a day while we wait
            assert sink.snapshot()["retry_in_s"] == first  # the deadline does not move
            async with asyncio.timeout(DELIVER_TIMEOUT):
                assert await task == []
        finally:
            task.cancel()
        reqs = wms.ingest_requests()
        assert len(reqs) == 2
        assert reqs[1]["t"] - reqs[0]["t"] >= first  # the sink really waited that long
        clock.advance(first)  # the injected clock catches up with the wait that passed
        assert_delivered_once(wms, sink, rows)


def test_parse_retry_after_forms() -> None:
    wall = 1_800_000_000.0
    date = http_date(wall)
    assert parse_retry_after("120", wall) == 120.0
    assert parse_retry_after(" 7 ", wall) == 7.0
    # HTTP-date: relative to the reply's Date when it has one ...
    assert parse_retry_after(http_date(wall + 30), wall - 3600, date) == 30.0
    assert parse_retry_after(http_date(wall - 30), wall, date) == 0.0
    # ... our wall clock without a usable Date (the caller caps it).
    assert parse_retry_after(http_date(wall + 30), wall, "garbage") == 30.0
    assert parse_retry_after(http_date(wall + 30), wall) == 30.0
    for bad in ("-5", "1.5", "soon", "", "Wed, 99 Foo 2026 00:00:00 GMT", "٣"):
        assert parse_retry_after(bad, wall) is None, bad
    assert parse_retry_after(None, wall) is None


async def test_retry_after_date_without_usable_date_header_is_capped(
    make_sink: Callable[..., HttpSink],
) -> None:
    rows = make_rows(2)

    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={
            "Retry-After": http_date(time.time() + 3600), "Date": "not a date"})

    async with HostileWms() as wms:
        wms.plan = [busy]
        sink = make_sink(wms.url, retry_after_max=0.4)
        task = asyncio.create_task(sink.deliver(rows))
        try:
            await wait_until(lambda: sink.snapshot()["state"] == "backoff", what="backoff")
            assert sink.snapshot()["retry_in_s"] <= 0.4
            async with asyncio.timeout(DELIVER_TIMEOUT):
                assert await task == []
        finally:
            task.cancel()
        assert_delivered_once(wms, sink, rows)


# -- log storms ----------------------------------------------------------------------------


async def test_dead_letter_warnings_are_one_line_per_kind_and_interval(
    make_sink: Callable[..., HttpSink],
) -> None:
    async with HostileWms() as wms:
        async def reject_first(request: web.Request) -> web.StreamResponse:
            doc = json.loads(await request.read())
            first = doc["events"][0]["event_id"]
            wms.accepted += [e["event_id"] for e in doc["events"][1:]]
            return web.json_response({"rejected": [{"event_id": first, "reason": "unknown sku"}]})

        wms.plan = [reject_first for _ in range(20)]
        sink = make_sink(wms.url, batch_max=5)
        with structlog.testing.capture_logs() as logs:
            dead = []
            for i in range(20):
                dead += await deliver(sink, make_rows(5, start=1 + 5 * i))
        assert len(dead) == 20
        lines = [e for e in logs if e["event"] == "sink_dead_letters"]
        assert len(lines) == 1
        assert lines[0]["kind"] == "rejected"
        assert lines[0]["first_reason"] == "unknown sku"
        assert sink._throttle.held_back(("wms", "dead_letters", "rejected")) == 19
        assert sink.snapshot()["dead_letters"] == 20


async def test_followed_redirect_to_another_host_does_not_carry_the_token(
    make_sink: Callable[..., HttpSink], tmp_path: Path
) -> None:
    rows = make_rows(3)
    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    async with HostileWms() as wms:
        # Same loopback server, other host name: the token is for the configured host only.
        wms.plan = [redirect(308, f"http://localhost:{wms.port}/v2/ingest")]
        wms.routes["/v2/ingest"] = wms.accept
        sink = make_sink(wms.url, follow_redirects=True, token_file=token)
        assert await deliver(sink, rows) == []
        first, second = wms.requests
        assert first["authorization"] == "Bearer s3cret"
        assert second["path"] == "/v2/ingest"
        assert second["authorization"] is None
        assert second["body"] == first["body"]
        assert wms.accepted == [r.event_id for r in rows]
