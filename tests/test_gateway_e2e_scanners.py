"""Scanners → MQTT (real Mosquitto) → gateway process → WMS simulator, end to end."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import (
    alert_messages,
    connect_fleet,
    delivered,
    publish,
    read_ids_by_scanner,
    site,
    start,
    wait_until,
)

from gateway.core.events import make_event_id, parse_time
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.scanners import PublishedRead
from simulators.wms import WmsSimulator

SITE = "DC-EAST-1"
MiB = 1024 * 1024


def first_kinds(reads: list[PublishedRead]) -> dict[tuple[str, int], str]:
    """What each physical read was (a redelivery repeats its original's kind)."""
    kinds: dict[tuple[str, int], str] = {}
    for r in reads:
        kinds.setdefault((r.scanner, r.read_id), r.kind)
    return kinds


def event_id_of(r: PublishedRead) -> str:
    """The id the gateway must derive: reader + read id + the read's own time."""
    ms = round(parse_time(r.timestamp) * 1000)
    return make_event_id(SITE, r.scanner, f"read:{r.read_id}@{ms}")


def expected_ids(reads: list[PublishedRead]) -> set[str]:
    """Event ids of the physical reads (double reads are debounced, not events)."""
    kinds = first_kinds(reads)
    return {event_id_of(r) for r in reads if kinds[(r.scanner, r.read_id)] in ("read", "no_read")}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=root, timeout=60)


async def test_reads_arrive_exactly_once_in_order(tmp_path: Path, broker: MosquittoBroker,
                                                  wms: WmsSimulator) -> None:
    with GatewayProcess(site(tmp_path, broker, wms)) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=4)
        reads = await publish(fleet, 4000)
        fleet.close()
        want = expected_ids(reads)
        assert len(want) == 4000
        await wait_until(lambda: wms.stats()["unique"] >= 4000, 30, "4000 events at the WMS")
        assert wms.accepted_ids() == want
        assert wms.stats()["duplicates"] == 0
        per_scanner = read_ids_by_scanner(wms)
        assert sorted(per_scanner) == ["scan-01", "scan-02", "scan-03", "scan-04"]
        for ids in per_scanner.values():
            assert ids == sorted(ids), "events of one scanner reached the WMS out of order"
        assert await asyncio.to_thread(gw.stop) == 0


async def test_wms_outage_backlog_on_disk_memory_flat(tmp_path: Path, broker: MosquittoBroker,
                                                      wms: WmsSimulator) -> None:
    await wms.set_outage(True)
    with GatewayProcess(site(tmp_path, broker, wms)) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=4)
        # Past the store's redelivery window (16,384 ids), nothing may grow with backlog.
        reads = await publish(fleet, 20_000)
        await wait_until(lambda: gw.status()["store"].get("events", 0) >= 20_000, 30,
                         "20000 events in the store")
        rss_small = gw.rss_bytes()
        reads += await publish(fleet, 60_000)
        fleet.close()
        await wait_until(lambda: gw.status()["store"].get("events", 0) >= 80_000, 60,
                         "80000 events in the store")
        status = gw.status()
        rss_big = gw.rss_bytes()
        assert status["sinks"]["wms"]["state"] != "ok"
        assert status["sinks"]["wms"]["backlog_events"] >= 80_000
        assert status["store"]["file_bytes"] > 80_000 * 200, "backlog is not on disk"
        # 60,000 more events (~20 MB of JSON) held in memory would cost far more.
        assert rss_big - rss_small < 8 * MiB, (rss_small, rss_big)
        await wms.set_outage(False)
        await wait_until(lambda: wms.stats()["unique"] >= 80_000, 90, "backlog drained")
        assert wms.accepted_ids() == expected_ids(reads)
        await wait_until(lambda: gw.status()["store"]["events"] == 0, 10,
                         "delivered rows deleted from the store")


async def test_thirty_percent_server_errors_all_delivered(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    wms.faults.error_rate = 0.3
    with GatewayProcess(site(tmp_path, broker, wms, batch_max=100)) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=4)
        reads = await publish(fleet, 3000)
        fleet.close()
        await wait_until(lambda: wms.stats()["unique"] >= 3000, 60, "3000 events")
        assert wms.accepted_ids() == expected_ids(reads)
        assert wms.stats()["status_counts"].get("500", 0) > 0
        status = gw.status()
        assert status["store"]["dead_letters"]["sink"] == 0


async def test_poison_events_dead_lettered_neighbours_delivered(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    # The WMS answers 422 for a whole batch holding any code ending in 37.
    wms.faults.reject_pattern = r"37$"
    wms.faults.reject_field = "data.code"
    wms.faults.reject_mode = "batch422"
    with GatewayProcess(site(tmp_path, broker, wms)) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=4)
        reads = await publish(fleet, 2000)
        fleet.close()
        poison = {event_id_of(r) for r in reads if r.code.endswith("37")}
        assert poison
        good = expected_ids(reads) - poison
        await wait_until(lambda: wms.stats()["unique"] >= len(good), 30, "good events")
        await wait_until(lambda: gw.status()["store"]["dead_letters"]["sink"] >= len(poison),
                         10, "dead letters")
        assert wms.accepted_ids() == good
        out = cli("store", "dead-letters", "--config", str(gw.config_path), "--kind", "sink",
                  "--json")
        assert out.returncode == 0, out.stderr
        dead = [json.loads(line) for line in out.stdout.splitlines()]
        assert {d["event_id"] for d in dead} == poison
        assert all(d["reason"].startswith("422") for d in dead)


async def test_unauthorized_pauses_sink_and_resumes_when_token_fixed(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    wms.faults.token = "s3cret-token"
    token = tmp_path / "wms.token"
    token.write_text("expired-token\n")
    with GatewayProcess(site(tmp_path, broker, wms, token_file=token)) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=2)
        reads = await publish(fleet, 500)
        fleet.close()
        await wait_until(lambda: gw.status()["sinks"]["wms"]["state"] == "paused_auth", 20,
                         "sink paused")
        status = gw.status()
        assert any("wms" in a for a in alert_messages(status))
        assert 'wh_sink_paused{sink="wms"} 1' in gw.metrics()
        assert wms.stats()["unique"] == 0
        assert status["store"]["dead_letters"]["sink"] == 0
        token.write_text("s3cret-token\n")
        await wait_until(lambda: wms.stats()["unique"] >= 500, 20, "delivery after token fix")
        assert wms.accepted_ids() == expected_ids(reads)
        assert gw.status()["store"]["dead_letters"]["sink"] == 0
        assert 'wh_sink_paused{sink="wms"} 0' in gw.metrics()


async def _sigkill_chaos(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator,
                         total: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    with GatewayProcess(site(tmp_path, broker, wms)) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=4)
        flood = asyncio.create_task(publish(fleet, total))
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            await asyncio.to_thread(gw.kill)
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await start(gw)
        reads = await flood
        fleet.close()
        want = expected_ids(reads)
        await wait_until(lambda: wms.stats()["unique"] >= len(want), 120, "all events")
        await delivered(gw)
        stats = wms.stats()
        assert wms.accepted_ids() == want, "lost or foreign events after SIGKILLs"
        # Repeats are only of accepted ids (idempotent), never new ids.
        assert stats["unique"] == len(want)
        assert gw.starts == kills + 1


async def test_sigkill_during_flood_loses_nothing(tmp_path: Path, broker: MosquittoBroker,
                                                  wms: WmsSimulator) -> None:
    await _sigkill_chaos(tmp_path, broker, wms, total=30_000, kills=4, seed=5050)


@pytest.mark.soak
async def test_soak_many_sigkills_during_a_long_flood(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    await _sigkill_chaos(tmp_path, broker, wms, total=300_000, kills=25, seed=2026)


async def test_store_full_pushes_back_and_loses_no_business_event(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    await wms.set_outage(True)
    cfg = site(tmp_path, broker, wms, max_bytes="256 KiB")
    with GatewayProcess(cfg) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=4)
        reads = await publish(fleet, 3000)  # about 1.3 MB of events: 5x the store
        fleet.close()
        await wait_until(lambda: gw.status()["committer"]["full"], 20, "store full")
        status = gw.status()
        assert status["store"]["used_bytes"] <= 256 * 1024
        assert any("store full" in a for a in alert_messages(status))
        assert "wh_store_full 1" in gw.metrics()
        await wms.set_outage(False)
        await wait_until(lambda: wms.stats()["unique"] >= 3000, 60, "all events after full")
        assert wms.accepted_ids() == expected_ids(reads)
        await wait_until(lambda: not gw.status()["committer"]["full"], 10, "store accepting")


async def test_corrupt_store_moved_aside_and_gateway_starts(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    cfg = site(tmp_path, broker, wms)
    cfg.workdir.mkdir(parents=True)
    (cfg.workdir / "buffer.db").write_bytes(b"this is not a database\n" * 500)
    with GatewayProcess(cfg) as gw:
        await start(gw)
        status = gw.status()
        report = status["store"]["open_report"]
        assert report["corrupt"] is True
        assert await asyncio.to_thread(Path(report["moved_to"]).exists)
        assert any("corrupt" in a for a in alert_messages(status))
        assert gw.log_events("store_corrupt_moved_aside")
        fleet = connect_fleet(broker, count=1)
        reads = await publish(fleet, 100)
        fleet.close()
        await wait_until(lambda: wms.stats()["unique"] >= 100, 20, "events after recovery")
        assert wms.accepted_ids() == expected_ids(reads)
        # A restart does not move the (now healthy) store aside again.
        await asyncio.to_thread(gw.stop)
        await start(gw)
        assert gw.status()["store"]["open_report"]["corrupt"] is False


async def test_malformed_payloads_become_ingest_dead_letters(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator
) -> None:
    cfg = site(tmp_path, broker, wms, scanners=1, device_extra={"max_payload_bytes": 1024})
    topic = "site/DC-EAST-1/scanners/scan-01/reads"
    bad = {
        "not_json": b"\x00\x01 garbage {",
        "not_object": b"[1, 2, 3]",
        "missing_field": b'{"read_id": 5, "timestamp": "2026-11-23T10:00:00Z"}',
        "bad_timestamp": b'{"code": "TOTE-1", "read_id": 6, "timestamp": "yesterday"}',
        "too_large": b'{"code": "' + b"X" * 2000 + b'"}',
        "bad_field": b'{"code": {"nested": true}, "read_id": 7}',
    }
    with GatewayProcess(cfg) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=1)
        for payload in bad.values():
            await asyncio.to_thread(fleet.publish_raw, topic, payload)
        await asyncio.to_thread(fleet.publish_raw, topic, bad["not_json"])  # same kind twice
        reads = await publish(fleet, 20)
        fleet.close()
        await wait_until(lambda: wms.stats()["unique"] >= 20, 20, "good reads")
        assert wms.accepted_ids() == expected_ids(reads)
        await wait_until(lambda: gw.status()["store"]["dead_letters"]["ingest"] >= 7, 10,
                         "ingest dead letters")
        out = cli("store", "dead-letters", "--config", str(gw.config_path), "--kind", "ingest",
                  "--json")
        dead = [json.loads(line) for line in out.stdout.splitlines()]
        kinds = [d["reason"].split(":")[0] for d in dead]
        assert sorted(kinds) == sorted([*bad, "not_json"])
        for d in dead:
            kind = d["reason"].split(":")[0]
            assert base64.b64decode(d["body_b64"]) == bad[kind], "payload not kept whole"
            assert d["device"] == "scan-01" and d["context"]["topic"] == topic
        # Logged once per device and kind, counted every time.
        logged = [e["kind"] for e in gw.log_events("ingest_rejected")]
        assert sorted(logged) == sorted(bad)
        errors = gw.status()["devices"]["scan-01"]["ingest_errors"]
        assert errors["not_json"] == 2
        # Acknowledged: a restart gets no redelivery of them. The positive signal: a
        # read published after the restart arrives, and the broker would have sent
        # anything still owed to the gateway's session before it.
        await asyncio.to_thread(gw.stop)
        await start(gw)
        fleet = connect_fleet(broker, count=1, start_read_id=1000)
        after = await publish(fleet, 1)
        fleet.close()
        await wait_until(lambda: wms.accepted_ids() >= expected_ids(after), 20,
                         "the read published after the restart")
        assert gw.status()["devices"]["scan-01"]["messages"] == 1
        assert gw.status()["store"]["dead_letters"]["ingest"] == 7


async def test_redeliveries_and_double_reads(tmp_path: Path, broker: MosquittoBroker,
                                             wms: WmsSimulator) -> None:
    with GatewayProcess(site(tmp_path, broker, wms)) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=4, redeliver_rate=0.2, double_read_rate=0.2)
        reads = await publish(fleet, 1000, rate=400)
        fleet.close()
        kinds = first_kinds(reads)
        # Every message of a double read (and its redelivered copies) is debounced.
        doubles = [r for r in reads if kinds[(r.scanner, r.read_id)] == "double"]
        redeliveries = [r for r in reads if r.kind == "redelivery"]
        assert doubles and redeliveries
        want = expected_ids(reads)
        await wait_until(lambda: wms.stats()["unique"] >= len(want), 30, "all reads")
        await delivered(gw)
        assert wms.accepted_ids() == want, "a double read became an event, or a read was lost"
        status = gw.status()
        debounced = sum(d["debounced"] for d in status["devices"].values())
        assert debounced == len(doubles)
        # Redelivered copies are absorbed by the store's event-id index.
        assert status["committer"]["duplicates"] > 0
        assert wms.stats()["duplicates"] <= len(redeliveries)
