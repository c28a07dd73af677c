"""Mapped MQTT devices through the real gateway process, Mosquitto and the WMS simulator.

- the project's scanner fleet read through ``preset = "scanner-json"`` gives
  the WMS exactly the event ids the built-in scanner recognizer gives;
- a JSON device with nested and business fields reaches the WMS typed, and
  its mapping's health (events, dead letters with the raw sample, unmapped
  values) is in ``/api/status``; a device whose every message is rejected by
  its mapping is an alert.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from e2e import connect_fleet, delivered, publish, site, start, wait_until
from test_gateway_e2e_scanners import expected_ids

from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.wms import WmsSimulator

PACK_MAPPING: dict[str, Any] = {
    "ids": ["meta.seq"],
    "events": [{
        "on": "message", "type": "pack", "time": "meta.ts",
        "key": "read:{meta.seq}@{$source_ms}", "correlation": "order:{$data.order}",
        "data": {
            "code": {"field": "barcode.value", "type": "string", "required": True},
            "order": {"field": "order.id", "type": "string", "required": True},
            "line": {"field": "order.line", "type": "int"},
            "sku": {"field": "item.sku", "type": "string"},
            "quantity": {"field": "item.qty", "type": "int"},
            "unit": {"field": "item.uom", "type": "string",
                     "map": {"EA": "each", "CS": "case"}},
            "weight": {"field": "item.weight_kg", "type": "float"},
            "location": {"const": "PACK-3"},
        },
    }],
}


def _pack(seq: int, **item: Any) -> bytes:
    return json.dumps({
        "meta": {"seq": seq, "ts": 1_795_428_902_000 + seq},
        "barcode": {"value": f"LPN-{seq:06d}", "type": "CODE128"},
        "order": {"id": f"SO-{4700 + seq}", "line": str(seq % 5)},
        "item": {"sku": "SKU-99", "qty": "2", "uom": "EA", "weight_kg": "1.25", **item},
    }).encode()


def _publish(port: int, topic: str, payloads: list[bytes]) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pack-station-sim")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for p in payloads:
            client.publish(topic, p, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def _ingest_dead_letters(status_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(status_url + "/api/dead-letters?kind=ingest&limit=500",
                                timeout=5) as r:
        items: list[dict[str, Any]] = json.loads(r.read())["dead_letters"]
        return items


async def test_scanner_fleet_through_the_preset_gives_the_built_in_ids(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    setup = site(tmp_path, broker, wms, scanners=2, device_extra={"preset": "scanner-json"})
    with GatewayProcess(setup) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=2)
        reads = await publish(fleet, 1500)
        fleet.close()
        want = expected_ids(reads)
        await wait_until(lambda: wms.stats()["unique"] >= len(want), 30,
                         f"{len(want)} events at the WMS")
        await delivered(gw)
        assert wms.accepted_ids() == want
        dev = gw.status()["devices"]["scan-01"]
        assert dev["mapping"]["preset"] == "scanner-json"
        assert dev["mapping"]["events"] > 0 and dev["mapping"]["dead_letters"] == {}
        assert await asyncio.to_thread(gw.stop) == 0


async def test_json_device_business_fields_typed_and_mapping_health(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    devices = [
        {"id": "pack-3", "driver": "mqtt", "role": "scanner", "broker": "site",
         "topic": "vendor/pack3/reads", "mapping": PACK_MAPPING},
        {"id": "pack-4", "driver": "mqtt", "role": "scanner", "broker": "site",
         "topic": "vendor/pack4/reads", "mapping": PACK_MAPPING},
    ]
    setup = site(tmp_path, broker, wms, scanners=0, devices=devices)
    with GatewayProcess(setup) as gw:
        await start(gw)
        good = [_pack(i) for i in range(1, 6)]
        odd_unit = [_pack(6, uom="PAL")]
        await asyncio.to_thread(_publish, broker.port, "vendor/pack3/reads", good + odd_unit)
        # A second station whose firmware changed the unit codes: all rejected.
        await asyncio.to_thread(_publish, broker.port, "vendor/pack4/reads",
                                [_pack(100 + i, uom="XX") for i in range(25)])
        await wait_until(lambda: wms.stats()["unique"] >= 5, 30, "5 pack events at the WMS")
        await delivered(gw)
        packs = sorted((r["event"] for r in wms.events), key=lambda e: e["data"]["line"])
        assert {e["device"] for e in packs} == {"pack-3"}
        first = next(e for e in packs if e["data"]["code"] == "LPN-000001")
        assert first["type"] == "pack" and first["correlation_id"] == "order:SO-4701"
        assert first["data"] == {"code": "LPN-000001", "order": "SO-4701", "line": 1,
                                 "sku": "SKU-99", "quantity": 2, "unit": "each",
                                 "weight": 1.25, "location": "PACK-3"}
        assert first["occurred_at"] == "2026-11-23T10:15:02.001Z"

        def health(dev: str) -> dict[str, Any]:
            result: dict[str, Any] = gw.status()["devices"][dev]["mapping"]
            return result

        h3 = health("pack-3")
        assert (h3["events"], h3["dead_letters"]) == (5, {"unmapped_value": 1})
        assert h3["unmapped_values"] == {"item.uom": {"'PAL'": 1}}
        last = h3["last_rejected"]["unmapped_value"]
        assert last["reason"] == "unmapped_value: field 'item.uom' value 'PAL' is not mapped"
        assert '"uom": "PAL"' in last["sample"]
        await wait_until(lambda: any("device pack-4: all 25 messages" in a["message"]
                                     for a in gw.status()["alerts"]), 20,
                         "the all-rejected alert for pack-4")
        assert not any("pack-3" in a["message"] for a in gw.status()["alerts"])
        items = await asyncio.to_thread(_ingest_dead_letters, gw.status_url)
        assert len(items) == 26
        reasons = {d["reason"] for d in items if d["device"] == "pack-4"}
        assert reasons == {"unmapped_value: field 'item.uom' value 'XX' is not mapped"}
        raw = next(d for d in items if d["device"] == "pack-3")
        assert json.loads(base64.b64decode(raw["body_b64"]))["item"]["uom"] == "PAL"
        assert raw["context"] == {"point": "message", "field": "item.uom", "value": "'PAL'"}
        assert await asyncio.to_thread(gw.stop) == 0


def _normal(event: dict[str, Any]) -> str:
    """An event without what differs between two devices reading one server."""
    data = {k: v for k, v in event["data"].items() if k != "sorter"}
    return json.dumps([event["type"], event["occurred_at"], event["correlation_id"],
                       event["priority"], data], sort_keys=True)


async def test_sorter_preset_on_the_real_server_makes_the_built_in_events(
        tmp_path: Path, wms: WmsSimulator) -> None:
    """One sorter simulator, read by a built-in device and by a ``preset = "sorter"`` one."""
    from test_gateway_e2e_opcua import device, expected_ids, gateway, scans_logged

    from simulators.harness.sorter import SorterProcess

    routes = ["move", "scan", "exception", "device_status", "telemetry"]
    with SorterProcess(tmp_path / "sorter", rate=100, total=80, seed=11) as sorter:
        await asyncio.to_thread(sorter.start)
        devices = [device(sorter.endpoint, "sorter-1", induct="INDUCT-1"),
                   device(sorter.endpoint, "sorter-2", induct="INDUCT-1", preset="sorter")]
        with gateway(tmp_path, wms, devices, routes) as gw:
            await start(gw)
            await wait_until(lambda: scans_logged(sorter) == 80, 20, "80 items logged")
            log = sorter.read_log()
            want = expected_ids(log, "sorter-1") | expected_ids(log, "sorter-2")
            await wait_until(lambda: wms.accepted_ids() >= want, 20, "every confirm and scan")
            await delivered(gw)
            by_device: dict[str, list[str]] = {"sorter-1": [], "sorter-2": []}
            for rec in wms.events:
                if rec["event"]["type"] in ("move", "scan", "exception"):
                    by_device[rec["event"]["device"]].append(_normal(rec["event"]))
            assert sorted(by_device["sorter-1"]) == sorted(by_device["sorter-2"])
            assert len(by_device["sorter-2"]) == len(expected_ids(log, "sorter-2"))
            status = gw.status()["devices"]
            assert status["sorter-2"]["mapping"]["dead_letters"] == {}
            assert status["sorter-2"]["ingest_errors"] == {} == status["sorter-1"]["ingest_errors"]
            assert status["sorter-2"]["mapping"]["events"] >= len(by_device["sorter-2"])
