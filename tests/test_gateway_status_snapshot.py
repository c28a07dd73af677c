"""The typed status snapshot: what the API, the metrics and the CLI show.

Unit tests of the snapshot classes and of the rejection watch (injected
clock), then an in-process ``Gateway`` on a real store, a real Mosquitto and
its real status server.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from e2e import alert_messages, wait_until

from buffer.store import Store
from gateway.alerts import RejectionWatch
from gateway.app import Gateway
from gateway.cli import main
from gateway.config import GatewayConfig, parse_config
from gateway.core.records import IngestDeadLetter
from gateway.core.snapshot import ForwarderSnapshot, SinkSnapshot
from simulators.broker import MosquittoBroker, free_port
from simulators.scanners import ScannerFleet

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "site/DC-EAST-1/scanners/{}/reads"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- units ----------------------------------------------------------------------------


def test_sink_and_forwarder_dead_letter_counts_keep_distinct_keys() -> None:
    fwd = ForwarderSnapshot(cursor=40, events_delivered=35, dead_letters=5, batches=2,
                            last_batch_at=None)
    snap = SinkSnapshot.build("wms", {"type": "http", "state": "ok", "alert": None,
                                      "delivered": 35, "dead_letters": 3}, fwd, 7)
    doc = snap.to_json()
    # The forwarder's count (what the store recorded) no longer hides the sink's own.
    assert doc["dead_letters"] == 5
    assert doc["sink_reported_dead_letters"] == 3
    assert (doc["delivered"], doc["events_delivered"], doc["backlog_events"]) == (35, 35, 7)


def test_rejection_watch_needs_every_message_of_a_minimum_sample() -> None:
    clock = FakeClock()
    watch = RejectionWatch(window_s=60, min_messages=20, clock=clock)
    watch.observe({"scan-01": (19, 19), "scan-02": (30, 29)})
    assert not watch.rejecting_all("scan-01")  # too few to judge
    assert not watch.rejecting_all("scan-02")  # one message got through
    clock.now += 2
    watch.observe({"scan-01": (20, 20), "scan-02": (31, 30)})
    assert watch.rejecting_all("scan-01")
    assert not watch.rejecting_all("scan-02")
    assert [a.message for a in watch.alerts()] == [
        "device scan-01: all 20 messages of the last 60 s were rejected as ingest dead "
        "letters (payload format or mapping wrong?); list them with "
        "GET /api/dead-letters?kind=ingest"]


def test_rejection_alert_covers_the_last_window_only() -> None:
    clock = FakeClock()
    watch = RejectionWatch(window_s=60, min_messages=20, clock=clock)
    watch.observe({"scan-01": (25, 25)})
    assert watch.rejecting_all("scan-01")
    # Good messages start flowing: the window still holds the 25 rejected ones,
    # but no longer all of its messages were rejected.
    clock.now += 10
    watch.observe({"scan-01": (26, 25)})
    assert not watch.rejecting_all("scan-01")
    # A minute later only bad ones again, and enough of them.
    clock.now += 61
    watch.observe({"scan-01": (26, 25)})
    clock.now += 30
    watch.observe({"scan-01": (50, 49)})
    assert watch.rejecting_all("scan-01")
    # Silence: once the rejected ones are older than the window, the alert clears.
    clock.now += 61
    watch.observe({"scan-01": (50, 49)})
    assert not watch.rejecting_all("scan-01")
    assert [a.message for a in watch.alerts()] == []


def test_rejection_watch_refuses_a_nonsense_window() -> None:
    with pytest.raises(ValueError, match="window_s must be > 0"):
        RejectionWatch(window_s=0)


@pytest.mark.parametrize("module", ["status.py", "metrics.py", "status_page.py"])
def test_presentation_does_not_import_the_process(module: str) -> None:
    tree = ast.parse((ROOT / "gateway" / module).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "gateway.app" not in imported


# -- an in-process gateway --------------------------------------------------------------


def config(tmp_path: Path, broker: MosquittoBroker) -> GatewayConfig:
    raw: dict[str, Any] = {
        "site": {"id": "DC-EAST-1"},
        "store": {"path": str(tmp_path / "buffer.db"), "synchronous": "NORMAL"},
        "brokers": [{"id": "site", "port": broker.port}],
        "devices": [
            {"id": f"scan-{i:02d}", "driver": "mqtt", "broker": "site",
             "topic": TOPIC.format(f"scan-{i:02d}")}
            for i in (1, 2)
        ],
        # Nothing listens there: events stay in the store, which is all these tests need.
        "sinks": [{"id": "wms", "type": "http", "url": f"http://127.0.0.1:{free_port()}/e",
                   "backoff_initial": 0.05, "backoff_max": 0.5}],
        "status": {"port": free_port()},
        "shutdown_timeout": 5.0,
    }
    return parse_config(raw, tmp_path / "site.toml")


@contextlib.asynccontextmanager
async def running(gw: Gateway) -> AsyncIterator[None]:
    task = asyncio.create_task(gw.run(install_signals=False))
    try:
        async with asyncio.timeout(15):
            await gw.ready.wait()
        yield
    finally:
        gw.stop()
        async with asyncio.timeout(15):
            await task


async def get(gw: Gateway, path: str) -> str:
    url = f"http://127.0.0.1:{gw.cfg.status.port}{path}"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        return await r.text()


def publish_raw(broker: MosquittoBroker, messages: list[tuple[str, bytes]]) -> None:
    with ScannerFleet(broker.host, broker.port, count=2) as fleet:
        fleet.connect()
        for topic, payload in messages:
            fleet.publish_raw(topic, payload)


async def test_a_device_rejecting_everything_is_an_alert_and_a_metric(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    gw = Gateway(config(tmp_path, broker))
    good = json.dumps({"code": "TOTE-1", "read_id": 1,
                       "timestamp": "2026-11-23T10:00:00Z"}).encode()
    msgs = [(TOPIC.format("scan-01"), b"\x00 not json {") for _ in range(25)]
    # scan-02 sends as many bad ones, but one good one too: that is not 100 %.
    msgs += [(TOPIC.format("scan-02"), b"[1, 2]") for _ in range(24)]
    msgs.append((TOPIC.format("scan-02"), good))
    async with running(gw):
        await asyncio.to_thread(publish_raw, broker, msgs)

        async def status() -> dict[str, Any]:
            doc: dict[str, Any] = json.loads(await get(gw, "/api/status"))
            return doc

        seen: dict[str, Any] = {}

        async def poll() -> None:
            while True:
                seen.update(await status())
                if any(a.startswith("device scan-01:") for a in alert_messages(seen)):
                    return
                await asyncio.sleep(0.2)

        async with asyncio.timeout(15):
            await poll()
        alert = next(a for a in alert_messages(seen) if a.startswith("device scan-01:"))
        assert "all 25 messages of the last 60 s were rejected" in alert
        assert not any(a.startswith("device scan-02:") for a in alert_messages(seen)), seen
        assert seen["devices"]["scan-01"]["rejecting_all"] is True
        assert seen["devices"]["scan-02"]["rejecting_all"] is False
        assert seen["devices"]["scan-01"]["ingest_errors"] == {"not_json": 25}
        metrics = await get(gw, "/metrics")
        assert 'wh_device_rejecting_all{device="scan-01"} 1' in metrics
        assert 'wh_device_rejecting_all{device="scan-02"} 0' in metrics
        assert 'wh_device_messages_total{device="scan-02"} 25' in metrics


async def test_cli_and_api_give_dead_letters_the_same_json(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path, broker)
    store = Store(cfg.store.path)
    try:
        store.append([[IngestDeadLetter(
            device="scan-01", reason="not_json: test", payload=b"\x00\xff raw",
            # A peer's bytes inside the context must not break either listing.
            context={"topic": TOPIC.format("scan-01"), "raw_header": b"\x01\x02"})],
            [IngestDeadLetter(device="scan-02", reason="not_object: test", payload=b"[1]")]])
    finally:
        store.close()
    gw = Gateway(cfg)
    async with running(gw):
        api = json.loads(await get(gw, "/api/dead-letters"))["dead_letters"]
        capsys.readouterr()  # the gateway's log lines so far
        # Synchronous: the gateway's loop (and its logging) waits meanwhile.
        code = main(["store", "dead-letters", "--db", str(cfg.store.path), "--json"])
        out = capsys.readouterr().out
    assert code == 0
    cli = [json.loads(line) for line in out.splitlines()]
    assert len(api) == 2
    assert cli == api
    assert set(api[0]) == {"id", "kind", "sink", "device", "event_id", "type", "reason",
                           "created", "context", "body_bytes", "body_b64"}
    assert api[0]["context"]["raw_header"] == "AQI="  # base64 of the bytes
    assert api[0]["body_bytes"] == len(b"\x00\xff raw")


async def test_snapshot_is_typed_and_api_keeps_its_keys(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    gw = Gateway(config(tmp_path, broker))
    async with running(gw):
        await wait_until(lambda: gw.snapshot().store.max_bytes > 0, 10, "the first store stats")
        snap = gw.snapshot()
        assert set(snap.devices) == {"scan-01", "scan-02"}
        assert snap.devices["scan-01"].connected is True
        assert snap.sinks["wms"].forwarder is not None
        doc = json.loads(await get(gw, "/api/status"))
    assert set(doc) == {"site", "pid", "uptime_s", "ready", "alerts", "devices", "sinks",
                        "store", "committer", "tasks", "unrouted_messages", "rss_bytes",
                        "summary", "started_at"}
    sink = doc["sinks"]["wms"]
    for key in ("type", "url", "state", "alert", "delivered", "cursor", "events_delivered",
                "dead_letters", "sink_reported_dead_letters", "batches", "backlog_events"):
        assert key in sink, key
    assert doc["committer"]["full"] is False
    assert doc["tasks"]["status"]["state"] == "running"


async def test_page_files_history_and_metrics_content_type(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    gw = Gateway(config(tmp_path, broker))
    base = f"http://127.0.0.1:{gw.cfg.status.port}"
    async with running(gw), aiohttp.ClientSession() as s:
        for path, kind in (("/", "text/html"), ("/static/status.js", "text/javascript"),
                           ("/static/status.css", "text/css"),
                           ("/favicon.ico", "image/svg+xml")):
            async with s.get(base + path) as r:
                assert (r.status, r.content_type) == (200, kind), path
                assert len(await r.read()) > 100
        page = await get(gw, "/")
        assert "http://" not in page and "https://" not in page  # nothing from outside
        async with s.get(base + "/static/../app.py") as r:
            assert r.status == 404
        async with s.get(base + "/static/secret.txt") as r:
            assert r.status == 404
        async with s.get(base + "/metrics") as r:
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        # Nothing to deliver yet: no alert, and a history of zero rates to draw.
        await wait_until(lambda: len(gw.history) >= 3, 15, "three history samples")
        doc = json.loads(await get(gw, "/api/history"))
        assert doc["interval_s"] == 2.0 and len(doc["t"]) >= 2
        assert set(doc["sinks"]) == {"wms"} and len(doc["sinks"]["wms"]["backlog"]) == len(doc["t"])
        status = json.loads(await get(gw, "/api/status"))
    assert status["summary"]["state"] == "ok" and status["alerts"] == []
    assert status["sinks"]["wms"]["rate_out_per_s"] == 0.0
