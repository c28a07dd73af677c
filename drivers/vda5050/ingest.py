"""What the gateway reads from VDA 5050 vehicles: tolerant views and the decoder.

The views keep only the fields the gateway uses, ignore unknown keys (newer
minor versions add some) and accept the VDA 5050 3.0 spellings
(``CONNECTION_BROKEN``, action status ``PAUSED`` and ``RETRIABLE``).
``decode`` turns one MQTT message into a signal whose value is the
recognizer's report (``gateway.recognizers.amr``), or raises ``IngestError``
naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from drivers.vda5050.config import TOPICS
from gateway.core.errors import IngestError
from gateway.core.events import Signal, parse_time
from gateway.core.reports import (
    ActionPlan,
    ActionStatus,
    ConnectionReport,
    PlannedAction,
    StateReport,
    VehicleError,
)

Report = StateReport | ConnectionReport | ActionPlan


class View(BaseModel):
    """Base of the ingest views: unknown keys ignored (newer minor versions add some)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class HeaderIn(View):
    """The header fields the gateway uses."""

    headerId: int
    timestamp: str
    manufacturer: str
    serialNumber: str


class ConnectionIn(HeaderIn):
    """A ``connection`` message; 3.0's ``CONNECTION_BROKEN`` accepted."""

    connectionState: Literal["ONLINE", "OFFLINE", "CONNECTIONBROKEN", "CONNECTION_BROKEN"]


class ParameterIn(View):
    """An action parameter."""

    key: str
    value: Any = None


class ActionIn(View):
    """An action of an order or of an instantActions message."""

    actionType: str
    actionId: str
    actionParameters: list[ParameterIn] | None = None


class NodeIn(View):
    """An order node."""

    nodeId: str
    actions: list[ActionIn] = []


class EdgeIn(View):
    """An order edge."""

    edgeId: str
    startNodeId: str | None = None
    endNodeId: str | None = None
    actions: list[ActionIn] = []


class OrderIn(HeaderIn):
    """An ``order`` message."""

    orderId: str
    nodes: list[NodeIn]
    edges: list[EdgeIn] = []


class InstantActionsIn(HeaderIn):
    """An ``instantActions`` message."""

    actions: list[ActionIn]


class ActionStateIn(View):
    """An action state; 3.0's ``PAUSED`` and ``RETRIABLE`` accepted."""

    actionId: str
    actionType: str | None = None
    actionStatus: Literal["WAITING", "INITIALIZING", "RUNNING", "PAUSED", "RETRIABLE",
                          "FINISHED", "FAILED"]
    resultDescription: str | None = None


class LoadIn(View):
    """A load on the vehicle."""

    loadId: str | None = None


class ReferenceIn(View):
    """An error reference."""

    referenceKey: str
    referenceValue: Any = None


class ErrorIn(View):
    """An active error."""

    errorType: str
    errorLevel: str | None = None
    errorDescription: str | None = None
    errorReferences: list[ReferenceIn] | None = None


class BatteryIn(View):
    """A state's ``batteryState``."""

    batteryCharge: float
    charging: bool | None = None


class SafetyIn(View):
    """A state's ``safetyState``."""

    eStop: str
    fieldViolation: bool = False


class StateIn(HeaderIn):
    """A ``state`` message."""

    orderId: str
    lastNodeId: str
    actionStates: list[ActionStateIn]
    loads: list[LoadIn] | None = None
    errors: list[ErrorIn] = []
    batteryState: BatteryIn | None = None
    safetyState: SafetyIn | None = None


#: The ingest view of each topic.
INGEST_VIEWS: dict[str, type[HeaderIn]] = {
    "state": StateIn,
    "connection": ConnectionIn,
    "order": OrderIn,
    "instantActions": InstantActionsIn,
}


def _validation_detail(err: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}"
             for e in err.errors()[:3]]
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _plan(actions: Sequence[ActionIn], node_id: str | None = None,
          edge_id: str | None = None) -> list[PlannedAction]:
    return [PlannedAction(a.actionId, a.actionType,
                          {p.key: p.value for p in a.actionParameters or ()}, node_id, edge_id)
            for a in actions]


def to_report(msg: HeaderIn) -> Report:
    """The recognizer's view of one decoded message."""
    m, s = msg.manufacturer, msg.serialNumber
    if isinstance(msg, StateIn):
        battery, safety = msg.batteryState, msg.safetyState
        return StateReport(
            manufacturer=m, serial=s, header_id=msg.headerId, order_id=msg.orderId,
            last_node_id=msg.lastNodeId,
            actions=tuple(ActionStatus(a.actionId, a.actionType, a.actionStatus,
                                       a.resultDescription) for a in msg.actionStates),
            loads=None if msg.loads is None else tuple(x.loadId for x in msg.loads if x.loadId),
            errors=tuple(VehicleError(
                e.errorType, e.errorLevel, e.errorDescription,
                tuple(str(r.referenceValue) for r in e.errorReferences or ()
                      if r.referenceKey == "actionId"),
                tuple((r.referenceKey, str(r.referenceValue)) for r in e.errorReferences or ()),
            ) for e in msg.errors),
            battery_charge=None if battery is None else battery.batteryCharge,
            charging=None if battery is None else battery.charging,
            estop=None if safety is None else safety.eStop,
            field_violation=bool(safety is not None and safety.fieldViolation),
        )
    if isinstance(msg, ConnectionIn):
        return ConnectionReport(m, s, msg.headerId, msg.connectionState)
    if isinstance(msg, OrderIn):
        planned: list[PlannedAction] = []
        for node in msg.nodes:
            planned += _plan(node.actions, node_id=node.nodeId)
        for edge in msg.edges:
            planned += _plan(edge.actions, edge_id=edge.edgeId)
        return ActionPlan(m, s, msg.orderId, tuple(planned))
    if isinstance(msg, InstantActionsIn):
        return ActionPlan(m, s, None, tuple(_plan(msg.actions)))
    raise TypeError(f"no report for {type(msg).__name__}")


def decode(topic: str, payload: bytes | bytearray, manufacturer: str, serial: str, device: str,
           receive_time: float, max_bytes: int) -> Signal | None:
    """Decode one message of ``topic`` (``state``...) into a signal, or raise ``IngestError``.

    Returns ``None`` for an empty payload (a retained message being cleared).
    """
    if len(payload) > max_bytes:
        raise IngestError("too_large", f"{len(payload)} bytes > limit {max_bytes}")
    if not payload:
        return None
    view = INGEST_VIEWS.get(topic)
    if view is None:
        raise IngestError("bad_topic", f"unknown VDA 5050 topic {topic!r}; "
                          f"expected one of {list(TOPICS)}")
    try:
        msg = view.model_validate_json(payload)
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            raise IngestError("not_json", _validation_detail(err)) from None
        raise IngestError("invalid_message", f"{topic}: {_validation_detail(err)}") from None
    if msg.manufacturer != manufacturer or msg.serialNumber != serial:
        raise IngestError("identity_mismatch",
                          f"payload is from {msg.manufacturer}/{msg.serialNumber}, "
                          f"topic is {manufacturer}/{serial}")
    try:
        source_time = parse_time(msg.timestamp)
    except ValueError as err:
        raise IngestError("bad_timestamp", str(err)) from None
    return Signal(device=device, point=topic, value=to_report(msg), receive_time=receive_time,
                  source_time=source_time, source_seq=str(msg.headerId))
