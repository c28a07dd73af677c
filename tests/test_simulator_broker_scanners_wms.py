"""The site simulators against real components: Mosquitto, aiohttp over loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from multidict import CIMultiDictProxy
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from simulators.broker import MosquittoBroker, free_port
from simulators.scanners import ScannerFleet
from simulators.wms import FaultError, Faults, WmsSimulator, validate_faults

ROOT = Path(__file__).resolve().parent.parent
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# -- helpers ------------------------------------------------------------------


class Subscriber:
    """A paho subscriber that records every message it receives."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self._client.subscribe(topic, qos=1)
        assert self._subscribed.wait(5), "no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def event(event_id: str, **data: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "pick",
        "schema": "wh.event.v1",
        "site": "DC-EAST-1",
        "device": "scan-01",
        "occurred_at": "2026-11-23T10:15:02.350Z",
        "data": data,
    }


async def post(
    http: aiohttp.ClientSession, sim: WmsSimulator, events: list[Any], **headers: str
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with http.post(sim.url, json={"events": events}, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def control(
    http: aiohttp.ClientSession, sim: WmsSimulator, path: str, body: Any = None
) -> tuple[int, Any]:
    method = "GET" if body is None else "POST"
    async with http.request(method, sim.control_url + path, json=body) as resp:
        return resp.status, await resp.json()


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture
async def sim() -> AsyncIterator[WmsSimulator]:
    async with WmsSimulator(keep_events=1000) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


# -- broker -------------------------------------------------------------------


def test_broker_writes_config_and_restarts_on_same_port(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path) as b:
        conf = (tmp_path / "mosquitto.conf").read_text()
        assert f"listener {b.port} 127.0.0.1" in conf
        assert "max_queued_messages 0" in conf
        first_pid = b.pid
        b.restart()
        assert b.pid is not None and b.pid != first_pid
        sub = Subscriber(b, "#")  # connects: the broker listens again
        sub.close()
    assert b.pid is None


def test_broker_start_failure_reports_log(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "a") as first:
        clash = MosquittoBroker(tmp_path / "b", port=first.port)
        with pytest.raises(RuntimeError, match="in use"):
            clash.start()
    # Bound but not listening: the process itself fails, and says why.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        broken = MosquittoBroker(tmp_path / "c", port=holder.getsockname()[1])
        with pytest.raises(RuntimeError, match="Address already in use"):
            broken.start()
        assert broken.pid is None


# -- scanners -----------------------------------------------------------------


def test_fleet_publishes_reads_with_topics_fields_and_kinds(broker: MosquittoBroker) -> None:
    sub = Subscriber(broker, "site/DC-EAST-1/scanners/#")
    try:
        with ScannerFleet(
            broker.host,
            broker.port,
            count=3,
            seed=7,
            start_read_id=100,
            no_read_rate=0.15,
            double_read_rate=0.15,
            redeliver_rate=0.15,
            window=8,
        ) as fleet:
            published = fleet.publish(120)
        received = sub.wait_for(len(published))
    finally:
        sub.close()

    assert received == [(p.topic, p.payload) for p in published]
    kinds = {p.kind for p in published}
    assert kinds == {"read", "no_read", "double", "redelivery"}
    assert sum(p.kind in ("read", "no_read") for p in published) == 120

    last_id: dict[str, int] = {}
    codes_by_scanner: dict[str, set[str]] = {}
    previous: dict[str, bytes] = {}
    for p in published:
        assert p.topic == f"site/DC-EAST-1/scanners/{p.scanner}/reads"
        assert p.scanner in ("scan-01", "scan-02", "scan-03")
        doc = json.loads(p.payload)
        assert doc == {
            "code": p.code,
            "read_id": p.read_id,
            "timestamp": p.timestamp,
            "symbology": "CODE128",
        }
        assert TIMESTAMP.match(p.timestamp)
        if p.kind == "redelivery":
            assert p.payload == previous[p.scanner]
        else:
            # read ids grow per scanner, from the configured start
            assert p.read_id == last_id.get(p.scanner, 99) + 1
            last_id[p.scanner] = p.read_id
        if p.kind == "no_read":
            assert p.code == "NOREAD"
        elif p.kind == "double":
            assert p.code in codes_by_scanner[p.scanner]
        elif p.kind == "read":
            assert re.fullmatch(r"TOTE-\d{6}", p.code)
            codes_by_scanner.setdefault(p.scanner, set()).add(p.code)
        previous[p.scanner] = p.payload


def test_fleet_paces_rate_and_resumes_read_ids(broker: MosquittoBroker) -> None:
    with ScannerFleet(broker.host, broker.port, count=2, client_id="pace") as fleet:
        started = time.monotonic()
        published = fleet.publish(10, rate=50.0)
        elapsed = time.monotonic() - started
        resume = fleet.next_read_ids
    assert elapsed >= 9 / 50.0
    assert resume == {"scan-01": 6, "scan-02": 6}
    with ScannerFleet(broker.host, broker.port, count=2, client_id="pace", start_read_id=6) as f2:
        more = f2.publish(2)
    assert [p.read_id for p in more] == [6, 6]
    assert len(published) == 10


def test_fleet_floods_through_window(broker: MosquittoBroker) -> None:
    with ScannerFleet(broker.host, broker.port, count=4, client_id="flood") as fleet:
        published = fleet.publish(5000)
        assert len(published) == 5000
        assert fleet.published == 5000
        fleet.publish_raw("site/DC-EAST-1/scanners/scan-01/reads", b"{not json")


def test_publish_raw_delivers_payload(broker: MosquittoBroker) -> None:
    sub = Subscriber(broker, "site/raw/#")
    try:
        with ScannerFleet(broker.host, broker.port, client_id="raw") as fleet:
            fleet.publish_raw("site/raw/scan-01/reads", b"\x00garbage")
        assert sub.wait_for(1) == [("site/raw/scan-01/reads", b"\x00garbage")]
    finally:
        sub.close()


# -- WMS: contract ------------------------------------------------------------


async def test_dedup_counts_duplicates(sim: WmsSimulator, http: aiohttp.ClientSession) -> None:
    ev = event("e-1", container="TOTE-1")
    before = time.time()
    status, body, _ = await post(http, sim, [ev], **{"Idempotency-Key": "batch-1"})
    after = time.time()
    assert (status, body) == (200, {"accepted": 1, "duplicates": 0, "rejected": []})
    status, body, _ = await post(http, sim, [ev], **{"Idempotency-Key": "batch-1"})
    assert (status, body) == (200, {"accepted": 0, "duplicates": 1, "rejected": []})

    stats = sim.stats()
    assert (stats["received"], stats["unique"], stats["duplicates"]) == (2, 1, 1)
    assert stats["requests"] == 2 and stats["status_counts"] == {"200": 2}
    assert sim.accepted_ids() == {"e-1"}
    assert [r["event"] for r in sim.events] == [ev]
    assert before <= sim.events[0]["received_at"] <= after  # stamped on receipt, wall clock
    assert [r["idempotency_key"] for r in sim.requests] == ["batch-1", "batch-1"]
    assert all(r["events"] == 1 and r["bytes"] > 0 for r in sim.requests)

    status, stats_doc = await control(http, sim, "/stats")
    assert status == 200 and stats_doc["duplicates"] == 1


async def test_bad_bodies_get_400(sim: WmsSimulator, http: aiohttp.ClientSession) -> None:
    for data in (b"{nope", b"[]", b'{"events": {}}', b'{"events": [{"type": "pick"}]}'):
        async with http.post(sim.url, data=data) as resp:
            assert resp.status == 400
            assert "error" in await resp.json()
    async with http.post(sim.url, json={"events": [event("ok"), {"event_id": 5}]}) as resp:
        assert resp.status == 400
        assert "events[1]" in (await resp.json())["error"]
    assert sim.stats()["received"] == 0 and sim.accepted_ids() == set()


async def test_partial_reject_by_dotted_field(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.reject_pattern = r"^BAD"
    sim.faults.reject_field = "data.code"
    events = [event("a", code="OK-1"), event("b", code="BAD-2"), event("c", code="OK-3")]
    status, body, _ = await post(http, sim, events)
    assert status == 200
    assert body["accepted"] == 2
    assert [r["event_id"] for r in body["rejected"]] == ["b"]
    assert "data.code" in body["rejected"][0]["reason"]
    stats = sim.stats()
    assert (stats["received"], stats["unique"], stats["rejected"], stats["duplicates"]) == (
        3,
        2,
        1,
        0,
    )
    assert sim.accepted_ids() == {"a", "c"}


async def test_batch422_rejects_whole_request(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await sim.update_faults({"reject_pattern": "poison", "reject_mode": "batch422"})
    status, body, _ = await post(http, sim, [event("ok-1"), event("poison-1"), event("ok-2")])
    assert status == 422
    assert [r["event_id"] for r in body["rejected"]] == ["poison-1"]
    assert sim.accepted_ids() == set() and sim.stats()["received"] == 0

    sim.faults.reject_mode = "batch400"
    status, _, _ = await post(http, sim, [event("poison-2")])
    assert status == 400
    status, body, _ = await post(http, sim, [event("ok-1"), event("ok-2")])
    assert (status, body["accepted"]) == (200, 2)
    assert sim.stats()["rejected_requests"] == 2


async def test_413_over_max_body_bytes(sim: WmsSimulator, http: aiohttp.ClientSession) -> None:
    sim.faults.max_body_bytes = 600
    status, _, _ = await post(http, sim, [event(f"big-{i}") for i in range(10)])
    assert status == 413
    assert sim.accepted_ids() == set()
    assert sim.requests[-1]["bytes"] > 600
    status, _, _ = await post(http, sim, [event("small")])
    assert status == 200


async def test_401_with_wrong_token(sim: WmsSimulator, http: aiohttp.ClientSession) -> None:
    sim.faults.token = "s3cret"
    status, _, headers = await post(http, sim, [event("t-1")], Authorization="Bearer wrong")
    assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
    status, _, _ = await post(http, sim, [event("t-1")])
    assert status == 401
    status, body, _ = await post(http, sim, [event("t-1")], Authorization="Bearer s3cret")
    assert (status, body["accepted"]) == (200, 1)
    assert [r["authorization"] for r in sim.requests] == [
        "Bearer wrong",
        None,
        "Bearer s3cret",
    ]


async def test_retry_after_and_forced_status(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    await sim.update_faults({"retry_after_status": 429, "retry_after": 2, "retry_after_count": 2})
    for _ in range(2):
        status, _, headers = await post(http, sim, [event("r-1")])
        assert (status, headers["Retry-After"]) == (429, "2")
    status, _, _ = await post(http, sim, [event("r-1")])
    assert status == 200

    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    await sim.update_faults(
        {"retry_after_status": 503, "retry_after": date, "retry_after_count": 1}
    )
    status, _, headers = await post(http, sim, [event("r-2")])
    assert (status, headers["Retry-After"]) == (503, date)

    await sim.update_faults({"force_status": 403, "force_status_count": 1})
    status, _, _ = await post(http, sim, [event("r-3")])
    assert status == 403
    status, _, _ = await post(http, sim, [event("r-3")])
    assert status == 200
    assert sim.stats()["status_counts"] == {"200": 2, "403": 1, "429": 2, "503": 1}


async def test_error_rate_and_latency(sim: WmsSimulator, http: aiohttp.ClientSession) -> None:
    sim.faults.error_rate = 1.0
    status, body, _ = await post(http, sim, [event("x")])
    assert status == 500 and "error" in body
    sim.faults.error_rate = 0.0
    sim.faults.latency_ms = 150
    started = time.monotonic()
    status, _, _ = await post(http, sim, [event("x")])
    assert status == 200 and time.monotonic() - started >= 0.14


# -- WMS: outage --------------------------------------------------------------


async def test_outage_refuses_connections_and_recovers_on_same_port(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    port = sim.port
    status, _, _ = await post(http, sim, [event("before")])  # leaves a keep-alive connection
    assert status == 200
    await sim.set_outage(True)
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    async with fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.post(sim.url, json={"events": [event("during")]})
        # the pooled connection was dropped too
        with pytest.raises(aiohttp.ClientError):
            await post(http, sim, [event("during")])
        # the control API stays up
        status, faults = await control(http, sim, "/control/faults")
        assert status == 200 and faults["outage"] is True

        await sim.set_outage(False)
        assert sim.port == port
        async with fresh.post(sim.url, json={"events": [event("after")]}) as resp:
            assert resp.status == 200
    assert sim.accepted_ids() == {"before", "after"}


async def test_control_outage_reopens_by_itself(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    status, body = await control(http, sim, "/control/outage", {"seconds": 0.3})
    assert status == 200 and body["outage"] is True
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.post(sim.url, json={"events": [event("x")]})
        await wait_until(lambda: not sim.faults.outage, 10, "the outage to end by itself")
        async with fresh.post(sim.url, json={"events": [event("x")]}) as resp:
            assert resp.status == 200
    assert sim.faults.outage is False


# -- WMS: control API ---------------------------------------------------------


async def test_events_paging(http: aiohttp.ClientSession) -> None:
    async with WmsSimulator(keep_events=3) as small:
        for i in range(5):
            await post(http, small, [event(f"p-{i}")])
        status, page = await control(http, small, "/events?after=0&limit=2")
        assert status == 200
        # keep_events=3: the two oldest are gone, paging starts at index 2
        assert (page["total"], page["first"], page["next"]) == (5, 2, 4)
        assert [r["event"]["event_id"] for r in page["events"]] == ["p-2", "p-3"]
        status, page = await control(http, small, f"/events?after={page['next']}&limit=10")
        assert [r["event"]["event_id"] for r in page["events"]] == ["p-4"]
        assert page["next"] == 5
        status, page = await control(http, small, "/events?after=5")
        assert page["events"] == []
        status, _ = await control(http, small, "/events?after=x")
        assert status == 400
        assert small.stats()["unique"] == 5


async def test_faults_api_validates_and_names_bad_key(
    sim: WmsSimulator, http: aiohttp.ClientSession
) -> None:
    status, body = await control(http, sim, "/control/faults", {"latency_ms": 5, "error_rate": 2})
    assert status == 400 and body["key"] == "error_rate" and "error_rate" in body["error"]
    assert sim.faults.latency_ms == 0  # all or nothing
    status, body = await control(http, sim, "/control/faults", {"eror_rate": 0.1})
    assert status == 400 and body["key"] == "eror_rate"
    status, body = await control(http, sim, "/control/faults", {"reject_pattern": "("})
    assert status == 400 and body["key"] == "reject_pattern"

    status, body = await control(http, sim, "/control/faults", {"error_rate": 0.5, "seed": 3})
    assert status == 200 and body["error_rate"] == 0.5 and body["seed"] == 3
    status, body = await control(http, sim, "/control/faults")
    assert body == Faults(error_rate=0.5, seed=3).to_dict()

    await post(http, sim, [event("z")])
    status, stats = await control(http, sim, "/control/reset", {})
    assert status == 200 and stats["requests"] == 0 and stats["unique"] == 0
    assert sim.faults == Faults() and sim.events == [] and sim.requests == []

    with pytest.raises(FaultError) as err:
        validate_faults({"reject_mode": "some"})
    assert err.value.key == "reject_mode"


async def test_healthz(sim: WmsSimulator, http: aiohttp.ClientSession) -> None:
    assert await control(http, sim, "/healthz") == (200, {"ok": True})


# -- command line -------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def test_wms_cli_serves_and_stops_on_sigterm(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators",
        "wms",
        "--port",
        str(free_port()),
        "--control-port",
        "0",
        "--token-file",
        str(token),
        "--retry-after-status",
        "429",
        "--retry-after-count",
        "1",
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        line = ""
        while "wms simulator" not in line:
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line, "simulator exited before it listened"
        ingest, control_url = re.findall(r"http://\S+", line)
        auth = {"Authorization": "Bearer tok"}
        async with http.post(ingest, json={"events": [event("c-1")]}, headers=auth) as resp:
            assert resp.status == 429
        async with http.post(ingest, json={"events": [event("c-1")]}, headers=auth) as resp:
            assert resp.status == 200
        async with http.get(control_url + "/stats") as resp:
            assert (await resp.json())["unique"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


def test_scanners_cli_publishes_total(broker: MosquittoBroker) -> None:
    sub = Subscriber(broker, "cli/#")
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "simulators",
                "scanners",
                "--port",
                str(broker.port),
                "--count",
                "2",
                "--rate",
                "200",
                "--total",
                "6",
                "--topic-prefix",
                "cli",
            ],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            timeout=20,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        topics = [t for t, _ in sub.wait_for(6)]
    finally:
        sub.close()
    assert topics == ["cli/scan-01/reads", "cli/scan-02/reads"] * 3
