"""AMR recognizer: VDA 5050 messages (decoded as the driver does) → events, as tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from drivers.vda5050.ingest import decode
from gateway.core.events import Event, format_time, make_event_id, parse_time
from gateway.recognizers.amr import MAX_PLANNED_ACTIONS, AmrRecognizer, PlannedAction

SITE, DEVICE, M, S = "DC-EAST-1", "amr-fleet", "Acme", "AMR-7"
T0 = parse_time("2026-11-23T10:00:00Z")


def header(n: int, t: float = 0.0, serial: str = S) -> dict[str, Any]:
    return {"headerId": n, "timestamp": format_time(T0 + t), "version": "2.1.0",
            "manufacturer": M, "serialNumber": serial}


def action(aid: str, kind: str, **params: str) -> dict[str, Any]:
    return {"actionId": aid, "actionType": kind, "blockingType": "HARD",
            "actionParameters": [{"key": k, "value": v} for k, v in params.items()]}


def order(order_id: str, nodes: list[tuple[str, list[dict[str, Any]]]],
          edge_actions: list[dict[str, Any]] | None = None, n: int = 0) -> dict[str, Any]:
    edges = [{"edgeId": f"{a}>{b}", "sequenceId": 2 * i + 1, "released": True,
              "startNodeId": a, "endNodeId": b,
              "actions": (edge_actions or []) if i == 0 else []}
             for i, (a, b) in enumerate(zip([x for x, _ in nodes], [x for x, _ in nodes][1:],
                                            strict=False))]
    return {**header(n), "orderId": order_id, "orderUpdateId": 0,
            "nodes": [{"nodeId": node, "sequenceId": 2 * i, "released": True, "actions": acts}
                      for i, (node, acts) in enumerate(nodes)],
            "edges": edges}


def state(n: int, order_id: str, node: str, statuses: dict[str, str], *,
          loads: list[str] | None = None, errors: list[dict[str, Any]] | None = None,
          types: dict[str, str] | None = None, result: dict[str, str] | None = None,
          serial: str = S) -> dict[str, Any]:
    types = types or {}
    result = result or {}
    acts = []
    for aid, st in statuses.items():
        a: dict[str, Any] = {"actionId": aid, "actionStatus": st}
        if aid in types:
            a["actionType"] = types[aid]
        if aid in result:
            a["resultDescription"] = result[aid]
        acts.append(a)
    doc = {**header(n, n * 1.0, serial), "orderId": order_id, "orderUpdateId": 0,
           "lastNodeId": node, "lastNodeSequenceId": 0, "nodeStates": [], "edgeStates": [],
           "driving": False, "actionStates": acts, "batteryState": {"batteryCharge": 80,
                                                                     "charging": False},
           "operatingMode": "AUTOMATIC", "errors": errors or [],
           "safetyState": {"eStop": "NONE", "fieldViolation": False}}
    if loads is not None:
        doc["loads"] = [{"loadId": x} for x in loads]
    return doc


def connection(n: int, st: str, t: float = 0.0) -> dict[str, Any]:
    return {**header(n, t), "connectionState": st}


class Amr:
    """A recognizer fed through the driver's decoder, collecting events as dicts."""

    def __init__(self, **kw: Any) -> None:
        self.rec = AmrRecognizer(site=SITE, device=DEVICE, **kw)
        self.events: list[Event] = []

    def feed(self, topic: str, doc: dict[str, Any],
             receive: float = 1000.0) -> list[dict[str, Any]]:
        sig = decode(topic, json.dumps(doc).encode(), doc["manufacturer"], doc["serialNumber"],
                     DEVICE, T0 + receive, 1 << 20)
        assert sig is not None
        out = self.rec.feed(sig)
        self.events += out
        return [e.to_dict() for e in out]


def action_id(order_id: str, aid: str, failed: bool = False, serial: str = S) -> str:
    return make_event_id(SITE, DEVICE, f"action:{M}/{serial}/{order_id}/{aid}"
                         + (":failed" if failed else ""))


def brief(evs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in evs:
        d = e["data"]
        if e["type"] == "pick":
            out.append(("pick", d["load"], d["station"], d["mapping"]))
        elif e["type"] == "move":
            out.append(("move", d["load"], d["from"], d["to"], d["mapping"]))
        elif e["type"] == "exception":
            out.append(("exception", d["reason"], d.get("action_id")))
        else:
            out.append((e["type"], d["status"]))
    return out


PICK_DROP = [("ST-01", []), ("ST-02", [action("a1", "pick", loadId="TOTE-1")]),
             ("ST-03", [action("a2", "drop", loadId="TOTE-1")])]


def test_pick_then_drop_from_the_order() -> None:
    amr = Amr()
    assert amr.feed("order", order("o1", PICK_DROP)) == []
    assert amr.feed("state", state(1, "o1", "ST-01", {"a1": "WAITING", "a2": "WAITING"})) == []
    assert amr.feed("state", state(2, "o1", "ST-02", {"a1": "RUNNING", "a2": "WAITING"})) == []
    picks = amr.feed("state", state(3, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"}))
    assert brief(picks) == [("pick", "TOTE-1", "ST-02", "order")]
    pick = picks[0]
    assert pick["event_id"] == action_id("o1", "a1")
    assert pick["occurred_at"] == format_time(T0 + 3)  # the state's own timestamp
    assert pick["correlation_id"] == "load:TOTE-1"
    assert pick["data"]["amr"] == S and pick["data"]["manufacturer"] == M
    assert pick["data"]["order_id"] == "o1" and pick["data"]["action_type"] == "pick"
    moves = amr.feed("state", state(4, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"}))
    assert brief(moves) == [("move", "TOTE-1", "ST-02", "ST-03", "order")]
    assert moves[0]["event_id"] == action_id("o1", "a2")
    assert amr.rec.state_gaps == 0


@pytest.mark.parametrize(("params", "nodes_or_edge", "want"), [
    ({"stationName": "RACK-A3", "loadId": "T1"}, "node", "RACK-A3"),  # parameter wins
    ({"loadId": "T1"}, "node", "ST-02"),                               # else the node's id
    ({"loadId": "T1"}, "edge", "ST-01>ST-02"),                         # edge action: edge id
])
def test_station_of_a_pick(params: dict[str, str], nodes_or_edge: str, want: str) -> None:
    amr = Amr()
    pick = action("a1", "pick", **params)
    if nodes_or_edge == "node":
        amr.feed("order", order("o1", [("ST-01", []), ("ST-02", [pick])]))
    else:
        amr.feed("order", order("o1", [("ST-01", []), ("ST-02", [])], edge_actions=[pick]))
    evs = amr.feed("state", state(1, "o1", "ST-09", {"a1": "FINISHED"}))
    assert brief(evs) == [("pick", "T1", want, "order")]


def test_configured_action_types_and_parameters() -> None:
    amr = Amr(pick_actions={"load"}, drop_actions={"unload"}, station_parameter="dock",
              load_parameter="tote")
    amr.feed("order", order("o1", [("N1", [action("x", "load", tote="B-9", dock="D4")]),
                                   ("N2", [action("y", "unload", tote="B-9")]),
                                   ("N3", [action("z", "pick")])]))
    evs = amr.feed("state", state(1, "o1", "N2", {"x": "FINISHED", "y": "FINISHED",
                                                  "z": "FINISHED"}))
    assert brief(evs) == [("pick", "B-9", "D4", "order"), ("move", "B-9", "D4", "N2", "order")]
    assert amr.rec.unclassified == 1  # "pick" is not a pick action here


def test_failed_action_is_an_exception_with_its_errors() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    errors = [
        {"errorType": "pickFailed", "errorLevel": "WARNING", "errorDescription": "no load",
         "errorReferences": [{"referenceKey": "actionId", "referenceValue": "a1"}]},
        {"errorType": "batteryLow", "errorLevel": "WARNING"},
    ]
    evs = amr.feed("state", state(1, "o1", "ST-02", {"a1": "FAILED", "a2": "WAITING"},
                                  errors=errors, result={"a1": "pick failed: no load"}))
    assert brief(evs) == [("exception", "amr_action_failed", "a1")]
    d = evs[0]["data"]
    assert evs[0]["event_id"] == action_id("o1", "a1", failed=True)
    assert evs[0]["priority"] == "exception"
    assert d["result_description"] == "pick failed: no load"
    assert d["errors"] == [{"type": "pickFailed", "level": "WARNING", "description": "no load"}]
    assert d["load"] == "TOTE-1" and d["station"] == "ST-02"
    # Without an error naming the action, all active errors are attached.
    evs = amr.feed("state", state(2, "o1", "ST-02", {"a1": "FAILED", "a2": "FAILED"},
                                  errors=errors[1:]))
    assert brief(evs) == [("exception", "amr_action_failed", "a2")]
    assert evs[0]["data"]["errors"] == [{"type": "batteryLow", "level": "WARNING",
                                         "description": None}]


def test_gap_in_header_ids_still_reports_what_finished_between() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    amr.feed("state", state(1, "o1", "ST-01", {"a1": "WAITING", "a2": "WAITING"}))
    # States 2..6 lost (QoS 0): the pick and the drop both finished meanwhile.
    evs = amr.feed("state", state(7, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"}))
    assert brief(evs) == [("pick", "TOTE-1", "ST-02", "order"),
                          ("move", "TOTE-1", "ST-02", "ST-03", "order")]
    assert amr.rec.state_gaps == 5


def test_repeated_finished_state_emits_nothing_more() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    first = amr.feed("state", state(1, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"}))
    assert len(first) == 1
    assert amr.feed("state", state(1, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"})) == []
    for n in range(2, 6):  # periodic states keep listing it
        assert amr.feed("state", state(n, "o1", "ST-02", {"a1": "FINISHED",
                                                          "a2": "RUNNING"})) == []
    # A vehicle that restarted its counter is noted, nothing re-emitted.
    assert amr.feed("state", state(0, "o1", "ST-02", {"a1": "FINISHED", "a2": "RUNNING"})) == []
    assert amr.rec.header_resets == 1


def test_gateway_restart_rederives_the_same_ids() -> None:
    evs = []
    for _ in range(2):  # a fresh recognizer = the gateway after a restart
        amr = Amr()
        evs += amr.feed("state", state(9, "o1", "ST-02", {"a1": "FINISHED"},
                                       types={"a1": "pick"}, loads=["TOTE-1"]))
    assert len(evs) == 2 and evs[0]["event_id"] == evs[1]["event_id"] == action_id("o1", "a1")


def test_vda5050_3_spellings() -> None:
    amr = Amr()
    amr.feed("order", order("o1", PICK_DROP))
    # PAUSED and RETRIABLE are not terminal: nothing yet.
    assert amr.feed("state", state(1, "o1", "ST-02", {"a1": "PAUSED", "a2": "WAITING"})) == []
    assert amr.feed("state", state(2, "o1", "ST-02", {"a1": "RETRIABLE", "a2": "WAITING"})) == []
    evs = amr.feed("state", state(3, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"}))
    assert brief(evs) == [("pick", "TOTE-1", "ST-02", "order")]
    evs = amr.feed("connection", connection(4, "CONNECTION_BROKEN"))
    assert brief(evs) == [("device_status", "connection_broken"),
                          ("exception", "amr_connection_broken", None)]
    assert amr.rec.broken() == [f"{M}/{S}"]


def test_order_seen_after_the_state_falls_back_to_the_state() -> None:
    amr = Amr()
    amr.feed("state", state(1, "o1", "ST-01", {"a1": "WAITING"}, types={"a1": "pick"}, loads=[]))
    evs = amr.feed("state", state(2, "o1", "ST-02", {"a1": "FINISHED", "a2": "WAITING"},
                                  types={"a1": "pick", "a2": "drop"}, loads=["TOTE-1"]))
    assert brief(evs) == [("pick", "TOTE-1", "ST-02", "state")]
    assert evs[0]["event_id"] == action_id("o1", "a1")  # same id as with the order
    # The order arrives late: the pick is not reported again; the drop uses the order.
    amr.feed("order", order("o1", PICK_DROP))
    assert amr.feed("state", state(3, "o1", "ST-02", {"a1": "FINISHED", "a2": "RUNNING"},
                                   loads=["TOTE-1"])) == []
    evs = amr.feed("state", state(4, "o1", "ST-03", {"a1": "FINISHED", "a2": "FINISHED"},
                                  loads=[]))
    assert brief(evs) == [("move", "TOTE-1", "ST-02", "ST-03", "order")]


def test_order_never_seen() -> None:
    amr = Amr()
    # The gateway starts mid-order: the pick already finished; then the drop.
    evs = amr.feed("state", state(40, "o9", "ST-05", {"p": "FINISHED", "d": "RUNNING"},
                                  types={"p": "pick", "d": "drop"}, loads=["TOTE-5"]))
    assert brief(evs) == [("pick", "TOTE-5", "ST-05", "state")]
    evs = amr.feed("state", state(41, "o9", "ST-08", {"p": "FINISHED", "d": "FINISHED"},
                                  types={"p": "pick", "d": "drop"}, loads=[]))
    assert brief(evs) == [("move", "TOTE-5", "ST-05", "ST-08", "state")]
    # A vehicle that reports neither loads nor action types: the station, no load.
    evs = amr.feed("state", state(1, "o2", "ST-01", {"q": "FINISHED"}, types={"q": "pick"},
                                  serial="AMR-8"))
    assert brief(evs) == [("pick", None, "ST-01", "state")]
    evs = amr.feed("state", state(2, "o2", "ST-04", {"q": "FINISHED", "r": "FINISHED"},
                                  types={"q": "pick", "r": "drop"}, serial="AMR-8"))
    assert brief(evs) == [("move", None, "ST-01", "ST-04", "state")]
    # Unknown type: nothing to report but counted.
    assert amr.feed("state", state(3, "o2", "ST-04", {"q": "FINISHED", "r": "FINISHED",
                                                      "s": "FINISHED"}, serial="AMR-8")) == []
    assert amr.rec.unclassified == 1


def test_instant_actions_are_mapped() -> None:
    amr = Amr()
    amr.feed("instantActions", {**header(1), "actions": [
        action("i1", "pick", loadId="TOTE-3", stationName="BUF-1")]})
    evs = amr.feed("state", state(1, "o1", "ST-04", {"i1": "FINISHED"}))
    assert brief(evs) == [("pick", "TOTE-3", "BUF-1", "instant")]
    amr.feed("instantActions", {**header(2), "actions": [action("i2", "drop", loadId="TOTE-3")]})
    evs = amr.feed("state", state(2, "o1", "ST-06", {"i1": "FINISHED", "i2": "FINISHED"}))
    assert brief(evs) == [("move", "TOTE-3", "BUF-1", "ST-06", "instant")]


def test_connection_states_and_ids() -> None:
    amr = Amr()
    online = amr.feed("connection", connection(1, "ONLINE", 1.0))
    assert brief(online) == [("device_status", "online")]
    assert online[0]["event_id"] == make_event_id(
        SITE, DEVICE, f"connection:{M}/{S}/1@{round((T0 + 1.0) * 1000)}")
    assert online[0]["priority"] == "telemetry"
    assert online[0]["occurred_at"] == format_time(T0 + 1.0)
    # The same retained message again (a resubscribe): nothing.
    assert amr.feed("connection", connection(1, "ONLINE", 1.0)) == []
    # The last will: composed at connect (headerId 0), sent by the broker later.
    broken = amr.feed("connection", connection(0, "CONNECTIONBROKEN", 0.5), receive=2000.0)
    assert brief(broken) == [("device_status", "connection_broken"),
                             ("exception", "amr_connection_broken", None)]
    assert broken[1]["occurred_at"] == format_time(T0 + 2000.0)  # when it broke, not connect
    assert broken[0]["event_id"] != broken[1]["event_id"]
    assert amr.rec.connection_counts() == {"connection_broken": 1}
    assert brief(amr.feed("connection", connection(2, "ONLINE", 3.0))) == [
        ("device_status", "online")]
    assert brief(amr.feed("connection", connection(3, "OFFLINE", 4.0))) == [
        ("device_status", "offline")]
    assert amr.rec.broken() == []


def test_memory_is_bounded() -> None:
    amr = Amr(max_vehicles=3)
    for i in range(5):
        amr.feed("state", state(1, "o", "N", {}, serial=f"V{i}"))
    assert list(amr.rec.vehicles()) == [f"{M}/V2", f"{M}/V3", f"{M}/V4"]
    assert amr.rec.evicted_vehicles == 2
    many = [action(f"a{i}", "pick") for i in range(MAX_PLANNED_ACTIONS + 10)]
    amr.feed("instantActions", {**header(1, serial="V4"), "actions": many})
    planned = amr.rec._vehicles[(M, "V4")].planned
    assert len(planned) == MAX_PLANNED_ACTIONS
    assert "a0" not in planned and isinstance(planned["a10"][1], PlannedAction)


def test_not_a_report_is_a_type_error() -> None:
    from gateway.core.events import Signal

    with pytest.raises(TypeError, match="not a VDA 5050 report"):
        AmrRecognizer(site=SITE, device=DEVICE).feed(Signal(DEVICE, "state", {}, 0.0))
