"""The MQTT sink end to end: scanners → gateway → a second Mosquitto → a subscriber."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from e2e import connect_fleet, publish, site, start, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.core.events import make_event_id, parse_time
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.scanners import PublishedRead


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


async def test_mqtt_sink_publishes_events_and_holds_them_while_its_broker_is_down(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    out = MosquittoBroker(tmp_path / "out", persistence=True)
    await asyncio.to_thread(out.start)
    sub = Subscriber(out.port)
    try:
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
    finally:
        sub.close()
        await asyncio.to_thread(out.stop)
