"""The AMR simulator speaks valid VDA 5050 2.1.0 (checked against the project's models)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from e2e import wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from simulators.broker import MosquittoBroker
from simulators.harness.process import ChildProcess, simulator
from simulators.vda5050_spec import SPEC_MODELS, State

M = "SimRobotics"


class Recorder:
    """Every message under ``uagv/`` with its topic, QoS and retain flag."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        # Retain-as-published: see the retain flag of live messages too.
        self.client.subscribe("uagv/#", options=SubscribeOptions(qos=2, retainAsPublished=True))
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def of(self, kind: str, serial: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p, _, _ in self.messages if t.endswith("/" + kind)
                    and (serial is None or t.split("/")[3] == serial)]

    def publish(self, topic: str, doc: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def sim(broker: MosquittoBroker, log_path: Path, *args: str) -> ChildProcess:
    child = simulator("amr", [
        "--port", str(broker.port), "--manufacturer", M, "--state-interval", "0.5",
        "--speed", "40", "--action-time", "0.05", *args], log_path)
    child.start()
    return child


async def test_every_simulator_message_is_valid_vda5050(broker: MosquittoBroker,
                                                       tmp_path: Path) -> None:
    rec = Recorder(broker)
    busy = sim(broker, tmp_path / "busy.log", "--count", "4", "--standalone", "--fail-rate",
               "0.4", "--idle-min", "0", "--idle-max", "0.1", "--seed", "7")
    killed = sim(broker, tmp_path / "killed.log", "--count", "1", "--serial-prefix", "K-")
    try:
        await wait_until(lambda: len(rec.of("connection")) >= 5, 15, "5 vehicles ONLINE")
        head = {"timestamp": "2026-11-23T10:00:00Z", "version": "2.1.0", "manufacturer": M,
                "serialNumber": "AMR-0001"}
        base = f"uagv/v2/{M}/AMR-0001"
        # Instant actions of every kind the simulator knows, and one it does not.
        rec.publish(f"{base}/instantActions", {**head, "headerId": 1, "actions": [
            {"actionId": f"ia-{k}", "actionType": k, "blockingType": "NONE"}
            for k in ("stateRequest", "cancelOrder", "pick", "beep")]})
        # An order that is not VDA 5050 (no nodes): reported as an error in the state.
        rec.publish(f"{base}/order", {**head, "headerId": 2, "orderId": "x", "orderUpdateId": 0})

        def failed_and_finished() -> bool:
            seen = {(a.get("actionType"), a["actionStatus"]) for s in rec.of("state")
                    for a in s["actionStates"]}
            return ({("pick", "FINISHED"), ("drop", "FINISHED")} <= seen
                    and bool({("pick", "FAILED"), ("drop", "FAILED")} & seen))
        await wait_until(failed_and_finished, 20, "finished and failed actions")
        killed.kill()
        assert await asyncio.to_thread(busy.stop, 15, raise_on_kill=True) == 0
        await wait_until(lambda: any(c["connectionState"] == "CONNECTIONBROKEN"
                                     for c in rec.of("connection", "K-0001")), 10, "last will")
        await wait_until(lambda: len([c for c in rec.of("connection")
                                      if c["connectionState"] == "OFFLINE"]) == 4, 10, "OFFLINE")
    finally:
        for p in (busy, killed):
            p.kill()
        rec.close()

    with rec.lock:
        messages = list(rec.messages)
    kinds: Counter[str] = Counter()
    for topic, payload, qos, retain in messages:
        parts = topic.split("/")
        assert len(parts) == 5 and parts[:3] == ["uagv", "v2", M], topic
        kind = parts[4]
        if kind == "instantActions" or (kind == "order" and parts[3] == "AMR-0001"
                                        and b'"orderId": "x"' in payload):
            continue  # sent by this test, not the simulator
        msg = SPEC_MODELS[kind].model_validate_json(payload, strict=True)
        assert (msg.manufacturer, msg.serialNumber) == (M, parts[3])
        assert msg.version == "2.1.0"
        kinds[kind] += 1
        if kind == "connection":
            assert qos == 1 and retain, "connection messages are QoS 1, retained"
        elif kind == "state":
            assert qos == 0 and not retain
    assert kinds["state"] > 20 and kinds["connection"] >= 10 and kinds["order"] >= 4

    states = [State.model_validate(s) for s in rec.of("state")]
    actions = {(a.actionType, a.actionStatus) for s in states for a in s.actionStates}
    assert {("pick", "FINISHED"), ("drop", "FINISHED")} <= actions
    assert ("pick", "FAILED") in actions or ("drop", "FAILED") in actions
    assert any(s.loads for s in states), "picked loads are reported"
    errors = {e.errorType for s in states for e in s.errors}
    assert "validationError" in errors and ({"pickFailed", "dropFailed"} & errors)
    # The instant actions: stateRequest and cancelOrder done, pick refused (busy), beep unknown.
    final = {a.actionId: (a.actionStatus, a.resultDescription)
             for s in states if s.serialNumber == "AMR-0001" for a in s.actionStates
             if a.actionId.startswith("ia-")}
    assert final["ia-stateRequest"][0] == "FINISHED"
    assert final["ia-cancelOrder"][0] == "FINISHED"
    assert final["ia-beep"] == ("FAILED", "unsupported instant action 'beep'")
    # Header ids count up by one per topic and vehicle.
    for serial in ("AMR-0001", "AMR-0002"):
        ids = [s["headerId"] for s in rec.of("state", serial)]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
