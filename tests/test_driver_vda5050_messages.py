"""VDA 5050 message models, the driver's decoder and the fleet config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from drivers.vda5050.config import Vda5050Device
from drivers.vda5050.ingest import StateIn, decode
from gateway.config import ConfigError, parse_config
from gateway.core.errors import IngestError
from gateway.recognizers.amr import ConnectionReport, StateReport
from simulators.vda5050_spec import Connection, InstantActions, Order, State

HEADER = {"headerId": 3, "timestamp": "2026-11-23T10:00:00.12Z", "version": "2.1.0",
          "manufacturer": "Acme", "serialNumber": "AMR-1"}
STATE: dict[str, Any] = {
    **HEADER, "orderId": "o1", "orderUpdateId": 0, "lastNodeId": "N1", "lastNodeSequenceId": 0,
    "nodeStates": [], "edgeStates": [], "driving": False, "operatingMode": "AUTOMATIC",
    "actionStates": [{"actionId": "a1", "actionType": "pick", "actionStatus": "RUNNING"}],
    "batteryState": {"batteryCharge": 90, "charging": False}, "errors": [],
    "safetyState": {"eStop": "NONE", "fieldViolation": False},
}


def with_(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    for key, value in changes.items():
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    return out


ORDER: dict[str, Any] = {
    **HEADER, "orderId": "o1", "orderUpdateId": 0, "edges": [], "nodes": [
        {"nodeId": "N1", "sequenceId": 0, "released": True, "actions": [
            {"actionId": "a", "actionType": "pick", "blockingType": "HARD",
             "actionParameters": [{"key": "loadId", "value": "T1"},
                                  {"key": "height", "value": 1.2}]}]}]}


@pytest.mark.parametrize(("model", "doc"), [
    (State, STATE),
    (Connection, {**HEADER, "connectionState": "CONNECTIONBROKEN"}),
    (Order, ORDER),
    (InstantActions, {**HEADER, "actions": []}),
], ids=["state", "connection", "order", "instant_actions"])
def test_spec_models_accept_valid_messages(model: type[BaseModel], doc: dict[str, Any]) -> None:
    parsed = model.model_validate_json(json.dumps(doc))
    # Accepted as sent: every field kept under its wire name, no value coerced or dropped.
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc
    assert type(parsed).model_validate(doc) == parsed


@pytest.mark.parametrize(("change", "where"), [
    ({"orderId": None}, "orderId"),                                   # required field
    ({"operatingMode": "AUTO"}, "operatingMode"),                     # enum
    ({"headerId": "3"}, "headerId"),                                  # strict types
    ({"timestamp": "23.11.2026 10:00"}, "timestamp"),                 # date-time format
    ({"batteryState": {"batteryCharge": 1}}, "batteryState.charging"),  # nested required
    ({"actionStates": [{"actionId": "a", "actionStatus": "PAUSED"}]}, "actionStatus"),  # 3.0
    ({"loads": [{"loadId": "T", "colour": "red"}]}, "loads.0.colour"),  # unknown key
])
def test_spec_models_reject(change: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as err:
        State.model_validate_json(json.dumps(with_(STATE, **change)))
    assert where in str(err.value)


def test_connection_spec_has_2_1_spelling_only() -> None:
    with pytest.raises(ValidationError, match="connectionState"):
        Connection.model_validate({**HEADER, "connectionState": "CONNECTION_BROKEN"})


def test_ingest_view_is_tolerant() -> None:
    doc = with_(STATE, futureField={"x": 1}, orderUpdateId=None,
                actionStates=[{"actionId": "a1", "actionStatus": "RETRIABLE", "extra": 1}])
    view = StateIn.model_validate_json(json.dumps(doc))
    assert view.actionStates[0].actionStatus == "RETRIABLE"


def dec(topic: str, payload: bytes, m: str = "Acme", s: str = "AMR-1",
        max_bytes: int = 4096) -> Any:
    return decode(topic, payload, m, s, "fleet", 5.0, max_bytes)


def test_decode_builds_reports() -> None:
    sig = dec("state", json.dumps(with_(STATE, loads=[{"loadId": "T1"}, {}])).encode())
    assert sig.point == "state" and sig.source_seq == "3" and sig.receive_time == 5.0
    assert sig.source_time == pytest.approx(1795428000.12)
    assert isinstance(sig.value, StateReport)
    assert sig.value.loads == ("T1",) and sig.value.actions[0].action_type == "pick"
    sig = dec("connection", json.dumps({**HEADER, "connectionState": "ONLINE"}).encode())
    assert sig.value == ConnectionReport("Acme", "AMR-1", 3, "ONLINE")
    assert dec("connection", b"") is None  # a retained message being cleared


@pytest.mark.parametrize(("topic", "payload", "kind", "detail"), [
    ("state", b"{" * 5000, "too_large", "5000 bytes > limit 4096"),
    ("state", b"\xff not json", "not_json", "JSON"),
    ("state", b"[1, 2]", "invalid_message", "(message): Input should be an object"),
    ("state", json.dumps(with_(STATE, actionStates=None)).encode(), "invalid_message",
     "actionStates: Field required"),
    ("state", json.dumps(with_(STATE, serialNumber="AMR-2")).encode(), "identity_mismatch",
     "payload is from Acme/AMR-2, topic is Acme/AMR-1"),
    ("state", json.dumps(with_(STATE, timestamp="noon")).encode(), "bad_timestamp", "noon"),
    ("connection", json.dumps({**HEADER, "connectionState": "GONE"}).encode(),
     "invalid_message", "connectionState"),
    ("visualization", b"{}", "bad_topic", "visualization"),
])
def test_decode_rejects(topic: str, payload: bytes, kind: str, detail: str) -> None:
    with pytest.raises(IngestError) as err:
        dec(topic, payload)
    assert err.value.kind == kind
    assert detail in err.value.detail


# -- config --------------------------------------------------------------------------------


def fleet(**kw: Any) -> Vda5050Device:
    return Vda5050Device.model_validate({"id": "f", "driver": "vda5050", "broker": "site", **kw})


def test_subscriptions() -> None:
    assert fleet().subscriptions() == [f"uagv/v2/+/+/{t}" for t in
                                       ("state", "connection", "order", "instantActions")]
    f = fleet(interface_name="agv", major_version="v3", manufacturer="Acme",
              serial_numbers=["A1", "A2"])
    assert f.subscriptions()[:2] == ["agv/v3/Acme/A1/state", "agv/v3/Acme/A1/connection"]
    assert len(f.subscriptions()) == 8
    assert f.matches("Acme", "A2") and not f.matches("Acme", "A3")
    assert not f.matches("Other", "A1")
    assert fleet(serial_numbers=["A1"]).subscriptions()[0] == "uagv/v2/+/A1/state"


def site_config(device: dict[str, Any]) -> dict[str, Any]:
    return {"site": {"id": "S"}, "store": {"path": "b.db"}, "brokers": [{"id": "site"}],
            "devices": [{"id": "amr", "driver": "vda5050", "broker": "site", **device}]}


@pytest.mark.parametrize(("device", "message"), [
    ({"major_version": "2"}, "devices[0].major_version"),
    ({"interface_name": "u/agv"}, "devices[0].interface_name"),
    ({"manufacturer": "+"}, "devices[0].manufacturer"),
    ({"serial_numbers": ["A", "A"]}, "serial numbers listed more than once: ['A']"),
    ({"pick_actions": []}, "expected a non-empty list of VDA 5050 action types"),
    ({"pick_actions": ["x"], "drop_actions": ["x"]}, "in both pick_actions and drop_actions"),
    ({"max_vehicles": 0}, "devices[0].max_vehicles"),
    ({"max_payload_bytes": "100 B"}, "devices[0].max_payload_bytes"),
    ({"topic": "uagv/#"}, "devices[0].topic"),
])
def test_config_errors_are_named(device: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(site_config(device), Path("site.toml"))
    assert message in str(err.value)


def test_config_complete_example_loads() -> None:
    cfg = parse_config(site_config({
        "role": "amr", "interface_name": "uagv", "major_version": "v2",
        "manufacturer": "SimRobotics", "serial_numbers": ["AMR-0001"],
        "pick_actions": ["pick"], "drop_actions": ["drop"], "station_parameter": "stationName",
        "load_parameter": "loadId", "max_vehicles": 5000, "max_payload_bytes": "64 KiB",
    }), Path("site.toml"))
    dev = cfg.devices[0]
    assert isinstance(dev, Vda5050Device) and dev.serial_numbers == ["AMR-0001"]
    assert dev.max_payload_bytes == 65536
