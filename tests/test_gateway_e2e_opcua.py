"""Sorter simulator (OPC UA) → gateway process → WMS simulator, end to end.

Every component is real and on loopback: the asyncua sorter simulator in its
own process, the gateway in its own process, the WMS simulator in the test's
event loop. What the device recorded (its event log, in its state file) is
the reference: every divert confirm and scan in it must reach the WMS exactly
once, whatever happens to the connection in between.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from e2e import alert_messages, delivered, start, wait_until

from gateway.core.events import make_event_id
from simulators.broker import free_port
from simulators.harness.gateway import GatewayProcess, GatewaySetup
from simulators.harness.sorter import SorterProcess
from simulators.wms import WmsSimulator

SITE = "DC-EAST-1"
DEVICE = "sorter-1"
NS = "nsu=urn:warehouse-gateway:sorter-sim:model"


def device(endpoint: str, device: str = DEVICE, **extra: Any) -> dict[str, Any]:
    """A gateway device table for the simulator's address space."""
    return {
        "id": device, "driver": "opcua", "endpoint": endpoint, "role": "sorter",
        "backoff_initial": "100ms", "backoff_max": "1s", **extra,
        "events": [
            {"kind": "divert_confirm", "source": "ns=2;s=Sorter",
             "type": "ns=2;s=DivertConfirmEventType"},
            {"kind": "scan", "source": f"{NS};s=InductReader",
             "type": f"{NS};s=AutoIdScanEventType"},
        ],
        "nodes": [
            {"node": f"ns=2;s={node}", "point": point, "kind": kind}
            for node, point, kind in (
                ("Sorter.State", "state", "status"),
                ("Sorter.Counters.Total", "counter.total", "telemetry"),
                ("Sorter.Chutes.CHUTE-01.Full", "chute_full.CHUTE-01", "status"),
                ("Sorter.BeltSpeed", "belt_speed", "telemetry"))
        ],
    }


def gateway(tmp_path: Path, wms: WmsSimulator, devices: list[dict[str, Any]],
            routes: list[str] | None = None) -> GatewayProcess:
    """A gateway with only OPC UA devices (the site broker table is never used)."""
    cfg = GatewaySetup(workdir=tmp_path / "gw", broker_port=free_port(), wms_url=wms.url,
                       scanners=0, devices=devices,
                       http_extra={"routes": routes or ["move", "scan", "exception"]})
    return GatewayProcess(cfg)


def expected_ids(log: list[dict[str, Any]], device: str = DEVICE) -> set[str]:
    """The event id of every confirm and scan the device recorded."""
    ids = set()
    for rec in log:
        if rec["source"] == "Sorter":
            key = f"divert:{rec['tracking_id']}:{rec['confirm_seq']}"
        else:
            ms = round(rec["scan_time_us"] / 1e6 * 1000)
            key = f"scan:{rec['device_name']}:{rec['scan_id']}@{ms}"
        ids.add(make_event_id(SITE, device, key))
    return ids


def scans_logged(sorter: SorterProcess) -> int:
    """Items the sorter has finished (each has exactly one scan; its step commits at once)."""
    return sum(1 for r in sorter.read_log() if r["source"] == "InductReader")


async def call_simulation(endpoint: str, method: str) -> str:
    """Call one of the simulator's fault-injection methods."""
    async with Client(endpoint, timeout=5) as client:
        sim = client.get_node("ns=2;s=Simulation")
        result: str = await sim.call_method(ua.NodeId(f"Simulation.{method}", 2))
        return result


async def test_confirms_scans_and_status_reach_the_wms(tmp_path: Path, wms: WmsSimulator
                                                        ) -> None:
    with SorterProcess(tmp_path / "sorter", rate=100, total=150, seed=7) as sorter:
        await asyncio.to_thread(sorter.start)
        routes = ["move", "scan", "exception", "device_status", "telemetry"]
        with gateway(tmp_path, wms, [device(sorter.endpoint)], routes) as gw:
            await start(gw)
            await wait_until(lambda: scans_logged(sorter) == 150, 20, "150 items logged")
            want = expected_ids(sorter.read_log())
            business = lambda: {r["event"]["event_id"] for r in wms.events  # noqa: E731
                                if r["event"]["type"] in ("move", "scan", "exception")}
            await wait_until(lambda: business() >= want, 20, "every confirm and scan")
            assert business() == want
            assert wms.stats()["duplicates"] == 0
            events = [r["event"] for r in wms.events]
            log = {(r["tracking_id"], r["confirm_seq"]): r for r in sorter.read_log()
                   if r["source"] == "Sorter"}
            moves = [e for e in events if e["type"] == "move"]
            assert moves
            for move in moves:
                rec = log[(move["data"]["tracking_id"], move["data"]["confirm_seq"])]
                assert rec["result"] == "diverted"
                assert move["data"]["container"] == rec["barcode"]
                assert move["data"]["from"] == "INDUCT-1"
                assert move["data"]["to"] == rec["chute"]
                assert move["correlation_id"] == f"container:{rec['barcode']}"
            failures = {e["data"]["reason"] for e in events
                        if e["type"] == "exception" and "tracking_id" in e["data"]}
            assert failures <= {"no_read", "no_destination", "chute_full", "recirculated",
                                "lost"}
            assert any(e["type"] == "scan" and e["data"]["reader"] == "INDUCT-1-READER"
                       and e["data"]["symbology"] == "CODE128" for e in events)
            await wait_until(lambda: any(
                e["type"] == "telemetry" and e["data"]["point"] == "counter.total"
                and e["data"]["value"] == sorter.read_counters()["total"]
                for e in (r["event"] for r in wms.events)), 10, "final counter value")
            assert any(e["type"] == "device_status" and e["data"]["point"] == "state"
                       and e["data"]["value"] == "Execute" for e in events)
            dev = gw.status()["devices"][DEVICE]
            assert dev["connected"] is True
            assert dev["ingest_errors"] == {}
            assert gw.log_events("device_connected")


async def test_simulator_killed_and_restarted_mid_stream_loses_and_repeats_nothing(
    tmp_path: Path, wms: WmsSimulator
) -> None:
    sorter = SorterProcess(tmp_path / "sorter", rate=50, total=120, seed=3)
    with sorter, gateway(tmp_path, wms, [device(sorter.endpoint)]) as gw:
        await asyncio.to_thread(sorter.start)
        await start(gw)
        await wait_until(lambda: wms.stats()["unique"] >= 60, 20, "first events")
        history_before = gw.status()["devices"][DEVICE]["history_events"]
        await asyncio.to_thread(sorter.kill)
        before = sorter.read_counters()
        await wait_until(lambda: not gw.status()["devices"][DEVICE]["connected"], 10,
                         "the gateway notices the server is gone")
        assert any(DEVICE in a for a in alert_messages(gw.status()))
        await asyncio.to_thread(sorter.start)
        await wait_until(lambda: gw.status()["devices"][DEVICE]["connected"], 15, "reconnect")
        # What the restarted sorter fired before the gateway was back came from its history.
        await wait_until(lambda: gw.status()["devices"][DEVICE]["history_events"]
                         > history_before, 10, "history read after the reconnect")
        # The restarted sorter continues its sequences (retentive memory).
        await wait_until(lambda: sorter.read_counters()["total"] > before["total"], 10,
                         "items after the restart")
        assert sorter.read_counters()["next_tracking_id"] > before["next_tracking_id"]
        first_run = before["next_scan_id"] - 1
        await wait_until(lambda: scans_logged(sorter) == first_run + 120, 20,
                         "the second run's 120 items")
        want = expected_ids(sorter.read_log())
        await wait_until(lambda: wms.accepted_ids() >= want, 20, "every recorded event")
        await delivered(gw)
        assert wms.accepted_ids() == want, "lost or foreign events across the restart"
        assert wms.stats()["duplicates"] == 0
        confirms = [r for r in sorter.read_log() if r["source"] == "Sorter"]
        counters = sorter.read_counters()
        assert len(confirms) == counters["total"]
        assert sum(counters[k] for k in ("diverted", "no_read", "no_destination", "chute_full",
                                         "recirculated", "lost")) == counters["total"]
        unavailable = [e for e in gw.log_events("device_unavailable") if e["device"] == DEVICE]
        assert len(unavailable) == 1, unavailable
        assert [e["device"] for e in gw.log_events("device_available")] == [DEVICE]


async def test_bad_values_become_dead_letters_logged_once(tmp_path: Path,
                                                          wms: WmsSimulator) -> None:
    with SorterProcess(tmp_path / "sorter", rate=20, seed=5) as sorter, \
            gateway(tmp_path, wms, [device(sorter.endpoint)]) as gw:
        await asyncio.to_thread(sorter.start)
        await start(gw)
        await wait_until(lambda: wms.stats()["unique"] >= 10, 20, "first events")
        for _ in range(3):
            await call_simulation(sorter.endpoint, "InjectBadConfirm")
            await call_simulation(sorter.endpoint, "InjectBadValue")

        def errors() -> dict[str, int]:
            result: dict[str, int] = gw.status()["devices"][DEVICE]["ingest_errors"]
            return result

        await wait_until(lambda: errors() == {"bad_result": 3, "bad_value": 3}, 10,
                         "three of each bad value counted")
        await wait_until(lambda: gw.status()["store"]["dead_letters"]["ingest"] == 6, 5,
                         "six ingest dead letters")
        logged = [(e["device"], e["kind"]) for e in gw.log_events("ingest_rejected")]
        assert sorted(logged) == [(DEVICE, "bad_result"), (DEVICE, "bad_value")]
        # Ingest went on: good events after the bad ones still arrive.
        seen = wms.stats()["unique"]
        await wait_until(lambda: wms.stats()["unique"] > seen + 5, 10, "events after bad ones")
        assert gw.status()["devices"][DEVICE]["connected"] is True


async def test_silent_subscription_is_recreated_by_the_watchdog(tmp_path: Path,
                                                                wms: WmsSimulator) -> None:
    sorter = SorterProcess(tmp_path / "sorter", rate=60, total=150, seed=11)
    dev = device(sorter.endpoint, publishing_interval="100ms", keepalive_count=3)
    with sorter, gateway(tmp_path, wms, [dev]) as gw:
        await asyncio.to_thread(sorter.start)
        await start(gw)
        await wait_until(lambda: wms.stats()["unique"] >= 30, 20, "first events")
        # The server drops the subscription without telling the client: no more
        # notifications, no keep-alives, the session itself stays up.
        await call_simulation(sorter.endpoint, "DropSubscriptions")
        await wait_until(lambda: gw.status()["devices"][DEVICE]["subscriptions_recreated"] >= 1,
                         10, "the watchdog re-creates the subscription")
        silent = gw.log_events("opcua_subscription_silent")
        assert silent and silent[0]["device"] == DEVICE
        await wait_until(lambda: scans_logged(sorter) == 150, 20, "150 items logged")
        want = expected_ids(sorter.read_log())
        await wait_until(lambda: wms.accepted_ids() >= want, 20, "every recorded event")
        assert wms.accepted_ids() == want
        assert wms.stats()["duplicates"] == 0
        status = gw.status()["devices"][DEVICE]
        assert status["sessions"] == 1, "the session survived; only the subscription was new"
        assert not gw.log_events("device_unavailable")
