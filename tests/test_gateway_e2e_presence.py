"""The gateway's presence on MQTT: retained birth, last will on SIGKILL, offline on stop.

A real gateway process, a real Mosquitto, and a downstream subscriber that
keeps the last retained message of each presence topic.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from e2e import site, start, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until_sync

from gateway.core.presence import gateway_version
from simulators.broker import BrokerTls, MosquittoBroker
from simulators.certs import Issued, TestCa
from simulators.harness.gateway import GatewayProcess

GATEWAY_TOPIC = "wh/DC-EAST-1/gateway/status"


class Watcher:
    """Subscribes to the presence topics; remembers every message and whether it was retained."""

    def __init__(self, port: int, tls: tuple[Path, Issued] | None = None) -> None:
        self.seen: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id="presence-watcher", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(GATEWAY_TOPIC, 1), ("wh/DC-EAST-1/devices/+/status", 1)])
        self.client.on_message = self._on_message
        if tls is not None:
            ca, mine = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(mine.cert_file),
                                keyfile=str(mine.key_file))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def last(self, topic: str) -> dict[str, Any] | None:
        with self._lock:
            docs = [doc for t, doc, _ in self.seen if t == topic]
        return docs[-1] if docs else None

    def states(self) -> list[str]:
        with self._lock:
            return [doc["state"] for t, doc, _ in self.seen if t == GATEWAY_TOPIC]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str) -> dict[str, Any]:
    """What a new subscriber is given for ``topic`` (the retained message)."""
    w = Watcher(port)
    try:
        wait_until_sync(lambda: w.last(topic) is not None, 10, f"retained {topic}")
        doc = w.last(topic)
        assert doc is not None
        return doc
    finally:
        w.close()


async def test_birth_then_will_on_sigkill_then_offline_on_clean_stop(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    watcher = Watcher(broker.port)
    try:
        cfg = site(tmp_path, broker, None, mqtt_sink=True, scanners=2)
        gw = GatewayProcess(cfg)
        with gw:
            await start(gw)
            await wait_until(lambda: watcher.states()[-1:] == ["online"], 20, "birth")
            birth = watcher.last(GATEWAY_TOPIC)
            assert birth is not None
            assert birth["schema"] == "wh.presence.v1"
            assert birth["site"] == "DC-EAST-1"
            assert birth["version"] == gateway_version()
            assert birth["started_at"].endswith("Z") and "at" in birth
            device_topic = "wh/DC-EAST-1/devices/scan-01/status"
            await wait_until(lambda: (watcher.last(device_topic) or {}).get("state") == "up",
                             20, "scan-01 up")
            dev = await asyncio.to_thread(retained, broker.port, device_topic)
            assert dev["device"] == "scan-01" and dev["state"] == "up"

            # Killed: the broker publishes the will, retained.
            await asyncio.to_thread(gw.kill)
            await wait_until(lambda: watcher.states()[-1:] == ["offline"], 20, "the will")
            will = watcher.last(GATEWAY_TOPIC)
            assert will is not None
            assert will["reason"] == "connection_lost"
            assert will["started_at"] == birth["started_at"]
            kept = await asyncio.to_thread(retained, broker.port, GATEWAY_TOPIC)
            assert kept["state"] == "offline" and kept["reason"] == "connection_lost"

            # Back, then a clean stop: "offline" with reason "stopped", retained.
            await start(gw)
            await wait_until(lambda: watcher.states()[-1:] == ["online"], 20, "second birth")
            code = await asyncio.to_thread(gw.stop, 15)
            assert code == 0
            await wait_until(lambda: watcher.states()[-1:] == ["offline"], 20, "clean offline")
            bye = watcher.last(GATEWAY_TOPIC)
            assert bye is not None and bye["reason"] == "stopped", bye
            # Only one "offline" after the clean stop: the will did not fire as well.
            await asyncio.sleep(0.5)
            assert watcher.states()[-2:] == ["online", "offline"]
            kept = await asyncio.to_thread(retained, broker.port, GATEWAY_TOPIC)
            assert kept["reason"] == "stopped"
            gone = await asyncio.to_thread(retained, broker.port, device_topic)
            assert gone["state"] == "down"
    finally:
        watcher.close()


def test_documented_payloads_are_what_the_gateway_sends() -> None:
    """docs/mqtt.md#presence shows each payload with exactly the fields, in order."""
    from gateway.core.presence import device_payload, gateway_payload, will_payload

    text = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text()
    section = text[text.index("## Presence"):text.index("## TLS to the broker")]
    documented = [json.loads(block.split("```", 1)[0])
                  for block in section.split("```json\n")[1:]]
    sent = [json.loads(p) for p in (
        gateway_payload("online", "DC-EAST-1", 1.0, at=2.0),
        will_payload("DC-EAST-1", 1.0),
        gateway_payload("offline", "DC-EAST-1", 1.0, at=3.0, reason="stopped"),
        device_payload("DC-EAST-1", "scan-01", True, 2.0),
    )]
    assert [list(d) for d in documented] == [list(s) for s in sent]
    for doc, real in zip(documented, sent, strict=True):
        for key in ("schema", "state", "reason", "site", "device"):
            if key in real:
                assert doc[key] == real[key], key


async def test_presence_over_mutual_tls(tmp_path: Path) -> None:
    """The gateway's MQTT sink on a broker that requires client certificates."""

    ca = TestCa(tmp_path / "pki")
    server = ca.issue("broker", hosts=("127.0.0.1",))
    gw_cert = ca.issue("gateway", hosts=(), client=True)
    sub_cert = ca.issue("watcher", hosts=(), client=True)
    tls = BrokerTls(server.cert_file, server.key_file, ca.cert_file, require_certificate=True)
    with MosquittoBroker(tmp_path / "mosquitto", tls=tls) as tls_broker:
        cfg = site(tmp_path, tls_broker, None, mqtt_sink=True, scanners=0, broker_extra={
            "tls": True, "ca_file": ca.cert_file, "cert_file": gw_cert.cert_file,
            "key_file": gw_cert.key_file})
        with GatewayProcess(cfg) as gw:
            await start(gw)
            watcher = Watcher(tls_broker.port, tls=(ca.cert_file, sub_cert))
            try:
                await wait_until(lambda: watcher.states()[-1:] == ["online"], 20,
                                 "birth over TLS")
            finally:
                watcher.close()
            assert gw.status()["sinks"]["mqtt-out"]["state"] == "ok"
            assert gw.status()["alerts"] == []
