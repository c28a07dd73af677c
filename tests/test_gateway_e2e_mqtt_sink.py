"""The MQTT sink end to end: scanners → gateway → a second Mosquitto → a subscriber."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from e2e import connect_fleet, publish, site, start, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.core.events import make_event_id, parse_time
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.scanners import PublishedRead
from simulators.wms import WmsSimulator


class Subscriber:
    """A downstream system: persistent session, QoS 1, records what arrives."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict[str, Any], int]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id="downstream", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("wh/DC-EAST-1/events/#", 1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), msg.qos))

    def ids(self) -> set[str]:
        with self._lock:
            return {doc["event_id"] for _, doc, _ in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def ids_of(reads: list[PublishedRead]) -> set[str]:
    return {
        make_event_id(
            "DC-EAST-1", r.scanner, f"read:{r.read_id}@{round(parse_time(r.timestamp) * 1000)}"
        )
        for r in reads
    }


@pytest.fixture
async def downstream(tmp_path: Path) -> AsyncIterator[tuple[MosquittoBroker, Subscriber]]:
    """The MQTT sink's own broker (persistent sessions) and a subscriber on it."""
    out = MosquittoBroker(tmp_path / "out", persistence=True)
    await asyncio.to_thread(out.start)
    sub = Subscriber(out.port)
    try:
        yield out, sub
    finally:
        sub.close()
        await asyncio.to_thread(out.stop)


async def test_mqtt_sink_publishes_events_and_holds_them_while_its_broker_is_down(
    tmp_path: Path, broker: MosquittoBroker, downstream: tuple[MosquittoBroker, Subscriber]
) -> None:
    out, sub = downstream
    cfg = site(tmp_path, broker, None, mqtt_sink=True, mqtt_sink_port=out.port)
    with GatewayProcess(cfg) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=2, no_read_rate=0.1)
        first = await publish(fleet, 400)
        await wait_until(lambda: sub.ids() >= ids_of(first), 20, "first events downstream")
        topics = {topic for topic, _, _ in sub.messages}
        assert topics == {"wh/DC-EAST-1/events/scan", "wh/DC-EAST-1/events/exception"}
        for topic, doc, qos in sub.messages:
            assert qos == 1
            assert doc["schema"] == "wh.event.v1"
            assert topic.endswith("/" + doc["type"])

        # The sink's broker goes away: events wait in the store, not in memory.
        await asyncio.to_thread(out.stop)
        second = await publish(fleet, 400)
        fleet.close()
        await wait_until(
            lambda: gw.status()["sinks"]["mqtt-out"]["state"] == "disconnected", 20,
            "sink disconnected")
        await wait_until(
            lambda: (gw.status()["store"].get("backlog") or {}).get("mqtt-out", 0) >= 400,
            20, "backlog for the MQTT sink")
        assert not (sub.ids() & ids_of(second))

        await asyncio.to_thread(out.start)  # same port, sessions restored
        want = ids_of(first) | ids_of(second)
        await wait_until(lambda: sub.ids() >= want, 30, "every event downstream")
        assert sub.ids() == want
        await wait_until(
            lambda: gw.status()["sinks"]["mqtt-out"]["state"] == "ok", 10, "sink ok")


def _sink_metric(text: str, name: str, sink: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f'{name}{{sink="{sink}"}} ')]
    return float(line.split()[-1])


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        text: str = r.read().decode()
        return text


async def test_mqtt_sink_down_since_alert_and_events_in_per_sink(
    tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator,
    downstream: tuple[MosquittoBroker, Subscriber]
) -> None:
    out, sub = downstream
    # The WMS takes scans only; the MQTT sink takes every type.
    cfg = site(tmp_path, broker, wms, mqtt_sink=True, mqtt_sink_port=out.port,
               http_extra={"routes": ["scan"]})
    with GatewayProcess(cfg) as gw:
        await start(gw)
        fleet = connect_fleet(broker, count=2, no_read_rate=0.2)
        first = await publish(fleet, 200)
        await wait_until(lambda: sub.ids() >= ids_of(first), 20, "first events downstream")
        await wait_until(lambda: gw.status()["sinks"]["wms"]["backlog_events"] == 0
                         and gw.status()["sinks"]["mqtt-out"]["backlog_events"] == 0,
                         20, "both backlogs empty")
        status = gw.status()
        by_type = status["committer"]["events_by_type"]
        sinks = status["sinks"]
        # Events in: what was accepted with a type the sink's routes take.
        assert by_type.get("scan", 0) > 0 and by_type.get("exception", 0) > 0
        assert sinks["wms"]["events_in"] == by_type["scan"] == wms.stats()["unique"]
        assert sinks["mqtt-out"]["events_in"] == sum(by_type.values()) == len(sub.ids())
        for sid in ("wms", "mqtt-out"):
            assert sinks[sid]["events_in"] == sinks[sid]["events_delivered"]
        mqtt_ok = sinks["mqtt-out"]
        assert mqtt_ok["down_since"] is None and mqtt_ok["last_success"] is not None
        metrics = await asyncio.to_thread(_get_text, gw.status_url + "/metrics")
        assert _sink_metric(metrics, "wh_sink_events_in_total", "wms") == by_type["scan"]
        assert _sink_metric(metrics, "wh_sink_events_in_total", "mqtt-out") == sum(
            by_type.values())

        # The sink's broker stops: down since when it went, the alert, events in still
        # counted while none go out.
        stopped_at = time.time()
        await asyncio.to_thread(out.stop)
        await wait_until(
            lambda: any(a["kind"] == "sink_unavailable" and a["subject"] == "sink:mqtt-out"
                        for a in gw.status()["alerts"]), 20, "the sink-unavailable alert")
        second = await publish(fleet, 100)
        fleet.close()
        held = len(ids_of(second))

        def accepted_not_sent() -> bool:
            s = gw.status()["sinks"]["mqtt-out"]
            return bool(s["events_in"] - s["events_delivered"] == held)

        await wait_until(accepted_not_sent, 20, "the second reads accepted, held back")
        await wait_until(lambda: wms.stats()["unique"] == gw.status()["sinks"]["wms"][
            "events_in"], 20, "the WMS still served")
        status = gw.status()
        down = status["sinks"]["mqtt-out"]
        assert down["state"] == "disconnected"
        assert stopped_at - 1 <= down["down_since"] <= time.time()
        assert down["last_error"], down
        assert down["last_success"] == mqtt_ok["last_success"] < down["down_since"]
        (alert,) = [a for a in status["alerts"] if a["subject"] == "sink:mqtt-out"
                    and a["kind"] == "sink_unavailable"]
        assert alert["since"] is not None and abs(alert["since"] - down["down_since"]) < 1
        total = sum(status["committer"]["events_by_type"].values())
        assert down["events_in"] == total > down["events_delivered"]
        assert not (sub.ids() & ids_of(second))

        # Back on the same port: delivered, up again, the alert gone.
        restarted_at = time.time()
        await asyncio.to_thread(out.start)
        await wait_until(lambda: sub.ids() >= ids_of(first) | ids_of(second), 30,
                         "every event downstream")
        await wait_until(lambda: not any(a["subject"] == "sink:mqtt-out"
                                         for a in gw.status()["alerts"]), 20,
                         "the alert cleared")
        await wait_until(lambda: gw.status()["sinks"]["mqtt-out"]["backlog_events"] == 0,
                         20, "the MQTT backlog empty")
        up = gw.status()["sinks"]["mqtt-out"]
        assert up["state"] == "ok" and up["down_since"] is None
        assert up["last_success"] >= restarted_at
        assert up["events_in"] == up["events_delivered"] == len(sub.ids())
