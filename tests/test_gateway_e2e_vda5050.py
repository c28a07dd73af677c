"""AMR simulator → Mosquitto → gateway process (VDA 5050 driver) → WMS simulator."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from e2e import alert_messages, delivered, site, start, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from gateway.core.events import format_time, make_event_id, parse_time
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess
from simulators.harness.process import ChildProcess
from simulators.harness.process import simulator as simulator_process
from simulators.wms import WmsSimulator

SITE, FLEET, M = "DC-EAST-1", "amr-fleet", "SimRobotics"
ROOT = Path(__file__).resolve().parents[1]


def fleet_device(**extra: Any) -> dict[str, Any]:
    """The gateway's ``[[devices]]`` table of the simulated fleet."""
    return {"id": FLEET, "driver": "vda5050", "broker": "site", "manufacturer": M, **extra}


@contextmanager
def simulator(broker: MosquittoBroker, tmp_path: Path, *args: str) -> Iterator[ChildProcess]:
    """``python -m simulators amr`` as a child process (killed if still running)."""
    sim = simulator_process("amr", ["--port", str(broker.port), "--manufacturer", M,
                         "--state-interval", "1", "--speed", "50", "--action-time", "0.1",
                                          *args], tmp_path / "amr-sim.log")
    sim.start()
    try:
        yield sim
    finally:
        sim.kill()


class Master:
    """Master control: publishes orders and instant actions to the vehicles."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        self.states: dict[str, dict[str, Any]] = {}
        #: Action id → timestamp of the first state showing it FINISHED.
        self.first_finished: dict[str, str] = {}
        self.client.on_message = self._state
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"uagv/v2/{M}/+/state", 0)
        self.client.loop_start()
        self.header = 0

    def _state(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        self.states[doc["serialNumber"]] = doc
        for a in doc["actionStates"]:
            if a["actionStatus"] == "FINISHED":
                self.first_finished.setdefault(a["actionId"], doc["timestamp"])

    def status(self, serial: str, action_id: str) -> str | None:
        """The status of an action in the vehicle's last state."""
        for a in self.states.get(serial, {}).get("actionStates", []):
            if a["actionId"] == action_id:
                return str(a["actionStatus"])
        return None

    def idle(self, serial: str) -> bool:
        """No action of the vehicle's last state is waiting or running."""
        return all(a["actionStatus"] in ("FINISHED", "FAILED")
                   for a in self.states.get(serial, {}).get("actionStates", []))

    def send(self, serial: str, topic: str, body: dict[str, Any]) -> None:
        self.header += 1
        doc = {"headerId": self.header, "timestamp": format_time(0.0 + self.header),
               "version": "2.1.0", "manufacturer": M, "serialNumber": serial, **body}
        info = self.client.publish(f"uagv/v2/{M}/{serial}/{topic}", json.dumps(doc), qos=1)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def act(aid: str, kind: str, **params: str) -> dict[str, Any]:
    return {"actionId": aid, "actionType": kind, "blockingType": "HARD",
            "actionParameters": [{"key": k, "value": v} for k, v in params.items()]}


def pick_drop_order(order_id: str, load: str) -> dict[str, Any]:
    stops = [("ST-01", []), ("ST-05", [act(f"{order_id}-p", "pick", loadId=load)]),
             ("ST-10", [act(f"{order_id}-d", "drop", loadId=load, stationName="DOCK-2")])]
    return {"orderId": order_id, "orderUpdateId": 0,
            "nodes": [{"nodeId": n, "sequenceId": 2 * i, "released": True, "actions": a}
                      for i, (n, a) in enumerate(stops)],
            "edges": [{"edgeId": f"e{i}", "sequenceId": 2 * i + 1, "released": True,
                       "startNodeId": stops[i][0], "endNodeId": stops[i + 1][0], "actions": []}
                      for i in range(len(stops) - 1)]}


def action_event_id(serial: str, order_id: str, action_id: str) -> str:
    return make_event_id(SITE, FLEET, f"action:{M}/{serial}/{order_id}/{action_id}")


def events(wms: WmsSimulator, *types: str) -> list[dict[str, Any]]:
    return [r["event"] for r in wms.events if r["event"]["type"] in types]


def online(gw: GatewayProcess) -> int:
    count: int = gw.status()["devices"][FLEET]["vehicles"].get("online", 0)
    return count


def moves(wms: WmsSimulator) -> dict[str, tuple[Any, ...]]:
    return {ev["event_id"]: (ev["data"]["vehicle"], ev["data"]["container"], ev["data"]["from"],
                             ev["data"]["to"], ev["data"]["picked_at"] is not None,
                             ev["correlation_id"])
            for ev in events(wms, "move")}


async def test_orders_become_exactly_the_expected_move_events(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    cfg = site(tmp_path, broker, wms, scanners=0, devices=[fleet_device()])
    serials = ["AMR-0001", "AMR-0002", "AMR-0003"]
    with GatewayProcess(cfg) as gw, simulator(broker, tmp_path, "--count", "3") as sim:
        await start(gw)
        await wait_until(lambda: online(gw) == 3, 20, "3 AMRs online at the gateway")
        master = Master(broker)
        want: dict[str, tuple[Any, ...]] = {}
        for i, serial in enumerate(serials):
            oid, load = f"ORD-{i}", f"TOTE-{i}"
            master.send(serial, "order", pick_drop_order(oid, load))
            want[action_event_id(serial, oid, f"{oid}-d")] = (serial, load, "ST-05", "DOCK-2",
                                                              True, f"container:{load}")
        await wait_until(lambda: len(events(wms, "move")) == 3, 20, "3 moves at the WMS")
        # An instant pickup then drop where the vehicle stands (ST-10).
        master.send("AMR-0001", "instantActions",
                    {"actions": [act("IA-1", "pick", loadId="TOTE-X", stationName="BUF-1")]})
        await wait_until(lambda: master.status("AMR-0001", "IA-1") == "FINISHED", 10,
                         "the instant pickup finished", 0.05)
        await wait_until(lambda: master.idle("AMR-0001"), 10, "AMR-0001 idle", 0.05)
        master.send("AMR-0001", "instantActions", {"actions": [act("IA-2", "drop")]})
        await wait_until(lambda: len(events(wms, "move")) == 4, 10, "the instant drop")
        want[action_event_id("AMR-0001", "ORD-0", "IA-2")] = ("AMR-0001", "TOTE-X", "BUF-1",
                                                              "ST-10", True, "container:TOTE-X")
        master.close()
        # Periodic states keep listing the finished actions: nothing more may come.
        seen = gw.status()["devices"][FLEET]["messages"]["state"]
        await wait_until(lambda: gw.status()["devices"][FLEET]["messages"]["state"] >= seen + 6,
                         10, "more periodic states")
        assert moves(wms) == want
        assert len(events(wms, "move")) == len(want)
        assert events(wms, "pick") == []  # loading a tote is not an inventory pick
        assert events(wms, "exception") == []
        statuses = [(e["data"]["amr"], e["data"]["status"]) for e in events(wms, "device_status")]
        assert sorted(statuses) == [(s, "online") for s in serials]
        # An orderly stop: OFFLINE for each, and no broken-connection exception.
        await asyncio.to_thread(sim.stop, 15)
        await wait_until(lambda: len(events(wms, "device_status")) == 6, 10, "3 OFFLINE")
        assert events(wms, "exception") == []
        assert gw.status()["alerts"] == []


async def test_gateway_killed_mid_carry_reports_the_whole_move(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    cfg = site(tmp_path, broker, wms, scanners=0, devices=[fleet_device()])
    # 5 m/s: the 30 m from ST-05 to ST-16 take 6 s, the gateway is down for part of them.
    with GatewayProcess(cfg) as gw, simulator(broker, tmp_path, "--count", "1",
                                              "--speed", "5") as _sim:
        await start(gw)
        await wait_until(lambda: online(gw) == 1, 20, "the AMR online at the gateway")
        master = Master(broker)
        order = pick_drop_order("ORD-K", "TOTE-K")
        order["nodes"] = order["nodes"][1:]
        order["nodes"][1]["nodeId"] = "ST-16"
        order["edges"] = [{"edgeId": "e1", "sequenceId": 1, "released": True,
                           "startNodeId": "ST-05", "endNodeId": "ST-16", "actions": []}]
        for i, node in enumerate(order["nodes"]):
            node["sequenceId"] = 2 * i
        master.send("AMR-0001", "order", order)
        await wait_until(lambda: master.status("AMR-0001", "ORD-K-p") == "FINISHED", 20,
                         "the pickup finished", 0.02)
        picked_at = master.first_finished["ORD-K-p"]
        await wait_until(lambda: gw.status()["devices"][FLEET]["carrying"] == 1, 5,
                         "the gateway saw the pickup", 0.02)
        await asyncio.sleep(0.3)  # its group commit
        assert master.status("AMR-0001", "ORD-K-d") != "FINISHED", "dropped too early"
        await asyncio.to_thread(gw.kill)  # SIGKILL while the tote is carried
        await asyncio.sleep(0.5)
        await start(gw)
        assert any(e["notes"] == 1 for e in gw.log_events("recognizer_notes_restored"))
        assert master.status("AMR-0001", "ORD-K-d") != "FINISHED", "dropped while it was down"
        await wait_until(lambda: len(events(wms, "move")) == 1, 20, "the move at the WMS")
        master.close()
        move = events(wms, "move")[0]
        assert move["event_id"] == action_event_id("AMR-0001", "ORD-K", "ORD-K-d")
        assert move["correlation_id"] == "container:TOTE-K"
        assert {k: move["data"][k] for k in ("container", "from", "to", "picked_at", "vehicle",
                                             "pick_action_id", "mapping")} == {
            "container": "TOTE-K", "from": "ST-05", "to": "DOCK-2",
            "picked_at": format_time(parse_time(picked_at)), "vehicle": "AMR-0001",
            "pick_action_id": "ORD-K-p", "mapping": "order"}
        assert events(wms, "pick") == [] and events(wms, "exception") == []


async def test_killed_amr_last_will_becomes_an_exception(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    cfg = site(tmp_path, broker, wms, scanners=0, devices=[fleet_device()])
    with GatewayProcess(cfg) as gw, simulator(broker, tmp_path, "--count", "2",
                                              "--standalone") as sim:
        await start(gw)
        await wait_until(lambda: online(gw) == 2, 20, "2 AMRs online at the gateway")
        await asyncio.to_thread(sim.kill)

        def broken() -> list[dict[str, Any]]:
            return [e for e in events(wms, "exception")
                    if e["data"]["reason"] == "amr_connection_broken"]

        await wait_until(lambda: len(broken()) == 2, 20, "2 broken-connection exceptions")
        assert sorted(e["data"]["amr"] for e in broken()) == ["AMR-0001", "AMR-0002"]
        assert all(e["priority"] == "exception" and e["device"] == FLEET for e in broken())
        status = gw.status()
        assert status["devices"][FLEET]["vehicles"] == {"connection_broken": 2}
        assert any("2 AMR(s) with a broken connection" in a for a in alert_messages(status))
        assert len(gw.log_events("amr_connection_broken")) == 2
        # The retained will is read again after a gateway restart: same ids, no new events.
        await asyncio.to_thread(gw.stop)
        await start(gw)
        await wait_until(lambda: gw.status()["devices"][FLEET]["messages"].get(
            "connection", 0) >= 2, 10, "retained connection messages")
        await delivered(gw)  # nothing left to send: a new exception would be here by now
        assert len(broken()) == 2
        assert wms.stats()["unique"] == len(wms.accepted_ids())


async def test_malformed_messages_become_ingest_dead_letters(
        tmp_path: Path, broker: MosquittoBroker, wms: WmsSimulator) -> None:
    cfg = site(tmp_path, broker, wms, scanners=0,
               devices=[fleet_device(max_payload_bytes=1024)])
    base = f"uagv/v2/{M}/AMR-9"
    good = {"headerId": 1, "timestamp": "2026-11-23T10:00:00Z", "version": "2.1.0",
            "manufacturer": M, "serialNumber": "AMR-9", "connectionState": "ONLINE"}
    bad = {
        "not_json": (f"{base}/state", b"\x00\x01 garbage {"),
        "invalid_message": (f"{base}/state", json.dumps({**good, "orderId": "o"}).encode()),
        "identity_mismatch": (f"{base}/connection",
                              json.dumps({**good, "serialNumber": "AMR-1"}).encode()),
        "bad_timestamp": (f"{base}/connection", json.dumps({**good, "timestamp": "x"}).encode()),
        "too_large": (f"{base}/order", b'{"pad": "' + b"x" * 2000 + b'"}'),
    }
    with GatewayProcess(cfg) as gw:
        await start(gw)
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             protocol=mqtt.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        for topic, payload in [*bad.values(), bad["not_json"]]:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        client.publish(f"{base}/connection", json.dumps(good), qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        # The driver carries on: the good message after them becomes an event.
        await wait_until(lambda: len(events(wms, "device_status")) == 1, 10, "the good message")
        await wait_until(lambda: gw.status()["store"]["dead_letters"]["ingest"] >= 6, 10,
                         "ingest dead letters")
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "store", "dead-letters", "--config",
             str(gw.config_path), "--kind", "ingest", "--json"],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        dead = [json.loads(line) for line in out.stdout.splitlines()]
        assert sorted(d["reason"].split(":")[0] for d in dead) == sorted([*bad, "not_json"])
        for d in dead:
            topic, payload = bad[d["reason"].split(":")[0]]
            assert base64.b64decode(d["body_b64"]) == payload, "payload not kept whole"
            assert d["device"] == FLEET and d["context"]["topic"] == topic
        assert sorted(e["kind"] for e in gw.log_events("ingest_rejected")) == sorted(bad)
        assert gw.status()["devices"][FLEET]["ingest_errors"]["not_json"] == 2
