"""Pick and pack stations through the real gateway on a real Mosquitto, to the WMS simulator.

A put wall and a pack bench publish as the site simulator's do (the presets
``put-wall-json`` / ``pack-bench-json``): tasks and scale readings retained,
confirms, scans and closes at QoS 1. The WMS must receive the picks, short
picks, packs and pack exceptions with the ids of their source keys, a confirm
of a task never shown must be an ingest dead letter, a redelivered confirm
must not make a second event — and a gateway SIGKILLed between a task and its
confirm (or in the middle of a pack) must still book them after its restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from e2e import delivered, site, start, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from gateway.core.events import format_time, make_event_id, parse_time
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.site.config import site_codes
from simulators.wms import WmsSimulator

SITE = "DC-EAST-1"
WALL, BENCH = "putwall-01", "pack-01"
WALL_TOPIC = f"site/{SITE}/stations/{WALL}"
BENCH_TOPIC = f"site/{SITE}/pack/PACK-01"


class Station:
    """A station's MQTT client: publishes at QoS 1 and waits for each PUBACK."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="station-sim")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.read_id = 0

    def send(self, topic: str, doc: dict[str, Any], retain: bool = False) -> None:
        doc = {**doc, "timestamp": format_time(time.time())}
        info = self.client.publish(topic, json.dumps(doc), qos=1, retain=retain)
        info.wait_for_publish(10)
        self.last = doc

    def scan(self, code: str, qty: int | None = None) -> str:
        """A bench scan; returns its source key."""
        self.read_id += 1
        doc: dict[str, Any] = {"code": code, "read_id": self.read_id, "symbology": "CODE128"}
        if qty is not None:
            doc["qty"] = qty
        self.send(f"{BENCH_TOPIC}/scanner/reads", doc)
        return f"read:{self.read_id}@{round(parse_time(self.last['timestamp']) * 1000)}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def station(broker: MosquittoBroker) -> Iterator[Station]:
    st = Station(broker)
    yield st
    st.close()


def _gateway(tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> GatewayProcess:
    devices = [
        {"id": WALL, "driver": "mqtt", "role": "pick_station", "broker": "site",
         "topic": f"{WALL_TOPIC}/#",
         # One task topic per position of the wall, each holding its task retained.
         "station": {"preset": "put-wall-json",
                     "messages": {"task": {"topic": "+/+/stations/+/task/+"}}}},
        {"id": BENCH, "driver": "mqtt", "role": "pack_station", "broker": "site",
         "topic": f"{BENCH_TOPIC}/#", "location": "PACK-01",
         "station": {"preset": "pack-bench-json", "abandon_after": "2s"}},
    ]
    return GatewayProcess(site(tmp_path, broker, wms, scanners=0, devices=devices,
                               site_extra={"codes": site_codes()}))


def _events(wms: WmsSimulator) -> dict[str, dict[str, Any]]:
    return {rec["event"]["event_id"]: rec["event"] for rec in wms.events}


def _id(device: str, key: str) -> str:
    return make_event_id(SITE, device, key)


def _task(st: Station, task_id: str, qty: int, line: int = 1, position: int = 1) -> None:
    st.send(f"{WALL_TOPIC}/task/{position}", {
        "task_id": task_id, "order": "ORD-000001", "line": line, "sku": f"SKU-000{line}",
        "qty": qty, "location": "PUT-01", "container": "TOTE-000001"}, retain=True)


async def _messages(gw: GatewayProcess, device: str, n: int) -> None:
    await wait_until(lambda: gw.status()["devices"][device]["messages"] >= n, 10,
                     f"{device} to have read {n} messages")


async def test_picks_and_shorts_survive_a_kill_between_task_and_confirm(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator, station: Station) -> None:
    gw = _gateway(tmp_path, broker, wms)
    with gw:
        await start(gw)
        send = asyncio.to_thread
        await send(_task, station, "PW-1", 3, 1)
        await send(station.send, f"{WALL_TOPIC}/confirm", {"task_id": "PW-1", "qty": 3,
                                                           "short": False})
        first_confirm = station.last
        await wait_until(lambda: _id(WALL, "task:PW-1:confirm") in _events(wms), 15,
                         "the first pick at the WMS")
        # The device sends its confirm again (same message): same event, nothing new.
        await send(station.client.publish(f"{WALL_TOPIC}/confirm", json.dumps(first_confirm),
                                          qos=1).wait_for_publish, 10)
        await _messages(gw, WALL, 3)
        await wait_until(lambda: gw.status()["devices"][WALL]["station"]["picks"] == 2, 10,
                         "the repeated confirm recognized")
        # The task is shown at position 2; position 1 moves on to a task that is confirmed
        # (so the gateway has read and acknowledged PW-2 before that pick reaches the
        # WMS); the gateway dies before the operator confirms PW-2.
        await send(_task, station, "PW-2", 3, 2, 2)
        await send(_task, station, "PW-3", 1, 3, 1)
        await send(station.send, f"{WALL_TOPIC}/confirm", {"task_id": "PW-3", "qty": 1})
        await wait_until(lambda: _id(WALL, "task:PW-3:confirm") in _events(wms), 15,
                         "the third pick at the WMS")
        await send(gw.kill)
        await send(station.send, f"{WALL_TOPIC}/confirm", {"task_id": "PW-2", "qty": 1,
                                                           "short": True})
        short_confirm = station.last
        await start(gw)
        await wait_until(lambda: _id(WALL, "task:PW-2:short") in _events(wms), 15,
                         "the short pick confirmed while the gateway was down")
        # A confirm of a task never shown: an ingest dead letter, no event.
        await send(station.send, f"{WALL_TOPIC}/confirm", {"task_id": "PW-404", "qty": 1})
        # The confirm queued while the gateway was down comes before the retained task
        # (a dead letter, then booked when the task arrives); this one stays one.
        await wait_until(lambda: gw.status()["store"]["dead_letters"]["ingest"] == 2, 10,
                         "two ingest dead letters")
        await delivered(gw)
        events = _events(wms)
        figures = gw.status()["devices"][WALL]["station"]
    # Since the restart: the short pick confirmed while down, booked when its task came.
    assert figures["picks"] == 1 and figures["booked_late"] == 1
    assert figures["unknown_confirms"] == 2
    picks = {k: e for k, e in events.items() if e["device"] == WALL}
    assert set(picks) == {_id(WALL, "task:PW-1:confirm"), _id(WALL, "task:PW-2:confirm"),
                          _id(WALL, "task:PW-2:short"), _id(WALL, "task:PW-3:confirm")}
    pick2 = picks[_id(WALL, "task:PW-2:confirm")]
    assert pick2["type"] == "pick" and pick2["occurred_at"] == short_confirm["timestamp"]
    assert pick2["correlation_id"] == "container:TOTE-000001"
    assert pick2["data"] == {"location": "PUT-01", "sku": "SKU-0002", "qty": 1,
                             "qty_requested": 3, "container": "TOTE-000001",
                             "order": "ORD-000001", "line": 2, "station": WALL,
                             "task_id": "PW-2"}
    short = picks[_id(WALL, "task:PW-2:short")]
    assert short["type"] == "exception" and short["data"]["reason"] == "short_pick"
    assert picks[_id(WALL, "task:PW-1:confirm")]["data"]["qty"] == 3


def _pack_task(st: Station, n: int, items: list[dict[str, Any]], expected: float) -> None:
    st.send(f"{BENCH_TOPIC}/task", {"container": f"TOTE-00000{n}", "order": f"ORD-00000{n}",
                                    "carton": f"CARTON-00000{n}", "items": items,
                                    "expected_weight_kg": expected}, retain=True)


async def test_packs_exceptions_and_a_pack_across_a_kill(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator, station: Station) -> None:
    items = [{"sku": "SKU-0001", "qty": 2}, {"sku": "SKU-0002", "qty": 1}]
    send = asyncio.to_thread
    gw = _gateway(tmp_path, broker, wms)
    with gw:
        await start(gw)
        # 1: an overweight carton with an item the order does not hold.
        await send(_pack_task, station, 1, items, 1.5)
        await send(station.scan, "TOTE-000001")
        await send(station.scan, "SKU-0001", 2)
        await send(station.scan, "SKU-0002", 1)
        stray = await send(station.scan, "SKU-0999", 1)
        await send(station.scan, "CARTON-000001")
        await send(station.send, f"{BENCH_TOPIC}/scale", {"weight_kg": 7.25}, True)
        await send(station.send, f"{BENCH_TOPIC}/close", {"close_seq": 1,
                                                          "carton": "CARTON-000001"})
        # 2: abandoned: tote and an item scanned, then nothing for longer than 2 s.
        await send(_pack_task, station, 2, items, 1.5)
        tote2 = await send(station.scan, "TOTE-000002")
        await send(station.scan, "SKU-0001", 2)
        last = station.last["timestamp"]
        await asyncio.sleep(2.5)
        # 3: the next tote: its task tells the gateway pack 2 was abandoned. The gateway
        # dies in the middle of this pack; the task and the scale are retained.
        await send(_pack_task, station, 3, items, 1.5)
        await wait_until(lambda: _id(BENCH, f"abandon:{tote2}") in _events(wms), 15,
                         "the abandoned pack at the WMS")
        await send(station.scan, "TOTE-000003")
        await send(station.scan, "SKU-0001", 2)
        await _messages(gw, BENCH, 14)
        await send(gw.kill)
        await send(station.scan, "SKU-0002", 1)
        await send(station.send, f"{BENCH_TOPIC}/scale", {"weight_kg": 1.55}, True)
        await start(gw)
        await send(station.send, f"{BENCH_TOPIC}/close", {"close_seq": 2,
                                                          "carton": "CARTON-000003"})
        await wait_until(lambda: _id(BENCH, "close:2") in _events(wms), 15, "the last pack")
        await delivered(gw)
        events = _events(wms)
    pack1 = events[_id(BENCH, "close:1")]
    assert pack1["type"] == "pack" and pack1["correlation_id"] == "container:TOTE-000001"
    assert pack1["data"] == {"container": "TOTE-000001", "carton": "CARTON-000001",
                             "items": [*items, {"sku": "SKU-0999", "qty": 1}],
                             "weight_kg": 7.25, "station": BENCH, "order": "ORD-000001",
                             "close_seq": "1"}
    over = events[_id(BENCH, "weight:1")]
    assert over["data"]["reason"] == "overweight" and over["data"]["expected_weight_kg"] == 1.5
    stray_ev = events[_id(BENCH, f"item:{stray}")]
    assert stray_ev["data"] == {"reason": "item_not_in_order", "sku": "SKU-0999",
                                "container": "TOTE-000001", "order": "ORD-000001",
                                "station": BENCH}
    abandoned = events[_id(BENCH, f"abandon:{tote2}")]
    assert abandoned["data"]["reason"] == "pack_abandoned"
    assert abandoned["data"]["container"] == "TOTE-000002"
    assert abandoned["occurred_at"] == format_time(parse_time(last) + 2.0)
    pack3 = events[_id(BENCH, "close:2")]
    assert pack3["data"]["container"] == "TOTE-000003"
    assert pack3["data"]["items"] == items and pack3["data"]["weight_kg"] == 1.55
    # Scans are scans with their code's kind; the tote scan joins the tote's events.
    scans = [e for e in events.values() if e["type"] == "scan" and e["device"] == BENCH]
    assert len(scans) == 10
    kinds = {e["data"]["code"]: e["data"]["code_kind"] for e in scans}
    assert kinds["TOTE-000001"] == "container" and kinds["SKU-0001"] == "sku"
    assert kinds["CARTON-000001"] == "carton"
    tote_scan = next(e for e in scans if e["data"]["code"] == "TOTE-000001")
    assert tote_scan["correlation_id"] == "container:TOTE-000001"
    # Nothing else: no weight exception for pack 3, no second abandonment.
    assert {e["data"]["reason"] for e in events.values() if e["type"] == "exception"} == {
        "overweight", "item_not_in_order", "pack_abandoned"}
