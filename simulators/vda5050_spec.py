"""VDA 5050 2.1.0 messages as pydantic models, written from the specification.

``State``, ``Connection``, ``Order``, ``InstantActions`` and their parts
describe VDA 5050 2.1.0 exactly: required fields, types, enums and bounds.
They are strict and reject unknown keys, which the specification's schemas
would tolerate: they check what *we* send (the AMR simulator), so that a
misspelt optional field cannot slip through. Only the simulator and the
tests use them: what the gateway reads from vehicles goes through the
tolerant views of ``drivers.vda5050.ingest``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: The protocol version the simulator speaks.
VERSION = "2.1.0"

_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_PI = 3.14159265359


def _check_timestamp(value: str) -> str:
    # The schema says format "date-time" (RFC 3339): a date, a time and a zone.
    if not _TIMESTAMP_RE.match(value):
        raise ValueError(f"expected an ISO 8601 UTC timestamp such as 2026-01-02T03:04:05.678Z, "
                         f"got {value!r}")
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


Timestamp = Annotated[str, AfterValidator(_check_timestamp)]
Angle = Annotated[float, Field(ge=-_PI, le=_PI)]
BlockingType = Literal["NONE", "SOFT", "HARD"]
ActionStatusValue = Literal["WAITING", "INITIALIZING", "RUNNING", "FINISHED", "FAILED"]
ConnectionState = Literal["ONLINE", "OFFLINE", "CONNECTIONBROKEN"]


class Spec(BaseModel):
    """Base of the spec models: strict types, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Header(Spec):
    """The header every VDA 5050 message starts with."""

    headerId: int
    timestamp: Timestamp
    version: str
    manufacturer: str
    serialNumber: str


# -- connection --------------------------------------------------------------------------


class Connection(Header):
    """``connection``: ONLINE on connect, OFFLINE on an orderly stop, the last will otherwise."""

    connectionState: ConnectionState


# -- order and instantActions ------------------------------------------------------------


class ActionParameter(Spec):
    """A key/value parameter of an action (the value may be anything but null)."""

    key: str
    value: bool | int | float | str | list[Any] | dict[str, Any]


class Action(Spec):
    """An action of an order's node or edge, or an instant action."""

    actionType: str
    actionId: str
    actionDescription: str | None = None
    blockingType: BlockingType
    actionParameters: list[ActionParameter] | None = None


class NodePosition(Spec):
    """Where a node of an order is."""

    x: float
    y: float
    theta: Angle | None = None
    allowedDeviationXY: Annotated[float, Field(ge=0)] | None = None
    allowedDeviationTheta: Angle | None = None
    mapId: str
    mapDescription: str | None = None


class Node(Spec):
    """A node of an order."""

    nodeId: str
    sequenceId: Annotated[int, Field(ge=0)]
    nodeDescription: str | None = None
    released: bool
    nodePosition: NodePosition | None = None
    actions: list[Action]


class ControlPoint(Spec):
    """A NURBS control point."""

    x: float
    y: float
    weight: Annotated[float, Field(ge=0)] | None = None


class Trajectory(Spec):
    """A NURBS trajectory of an edge."""

    degree: Annotated[int, Field(ge=1)]
    knotVector: list[Annotated[float, Field(ge=0, le=1)]]
    controlPoints: list[ControlPoint]


class Corridor(Spec):
    """The corridor an edge may be driven in."""

    leftWidth: Annotated[float, Field(ge=0)]
    rightWidth: Annotated[float, Field(ge=0)]
    corridorRefPoint: Literal["KINEMATICCENTER", "CONTOUR"] | None = None


class Edge(Spec):
    """An edge of an order."""

    edgeId: str
    sequenceId: Annotated[int, Field(ge=0)]
    edgeDescription: str | None = None
    released: bool
    startNodeId: str
    endNodeId: str
    maxSpeed: float | None = None
    maxHeight: float | None = None
    minHeight: float | None = None
    orientation: Angle | None = None
    orientationType: str | None = None
    direction: str | None = None
    rotationAllowed: bool | None = None
    maxRotationSpeed: float | None = None
    length: float | None = None
    trajectory: Trajectory | None = None
    corridor: Corridor | None = None
    actions: list[Action]


class Order(Header):
    """``order``: nodes and edges to traverse, with their actions."""

    orderId: str
    orderUpdateId: Annotated[int, Field(ge=0)]
    zoneSetId: str | None = None
    nodes: list[Node]
    edges: list[Edge]


class InstantActions(Header):
    """``instantActions``: actions to run now, outside any order."""

    actions: list[Action]


# -- state -------------------------------------------------------------------------------


class NodeState(Spec):
    """A node of the current order still to be traversed."""

    nodeId: str
    sequenceId: int
    nodeDescription: str | None = None
    released: bool
    nodePosition: NodePosition | None = None


class EdgeState(Spec):
    """An edge of the current order still to be traversed."""

    edgeId: str
    sequenceId: int
    edgeDescription: str | None = None
    released: bool
    trajectory: Trajectory | None = None


class AgvPosition(Spec):
    """The vehicle's position on a map."""

    x: float
    y: float
    theta: float
    mapId: str
    mapDescription: str | None = None
    positionInitialized: bool
    localizationScore: Annotated[float, Field(ge=0, le=1)] | None = None
    deviationRange: float | None = None


class Velocity(Spec):
    """The vehicle's velocity."""

    vx: float | None = None
    vy: float | None = None
    omega: float | None = None


class Load(Spec):
    """A load the vehicle carries (every field optional)."""

    loadId: str | None = None
    loadType: str | None = None
    loadPosition: str | None = None
    weight: Annotated[float, Field(ge=0)] | None = None


class ActionState(Spec):
    """The status of one action (of the order or an instant action)."""

    actionId: str
    actionType: str | None = None
    actionDescription: str | None = None
    actionStatus: ActionStatusValue
    resultDescription: str | None = None


class BatteryState(Spec):
    """Battery figures."""

    batteryCharge: float
    batteryVoltage: float | None = None
    batteryHealth: Annotated[float, Field(ge=0, le=100)] | None = None
    charging: bool
    reach: Annotated[float, Field(ge=0)] | None = None


class Reference(Spec):
    """A key/value reference of an error or information (e.g. actionId)."""

    referenceKey: str
    referenceValue: str


class Error(Spec):
    """An active error of the vehicle."""

    errorType: str
    errorReferences: list[Reference] | None = None
    errorDescription: str | None = None
    errorHint: str | None = None
    errorLevel: Literal["WARNING", "FATAL"]


class Information(Spec):
    """An information message of the vehicle."""

    infoType: str
    infoReferences: list[Reference] | None = None
    infoDescription: str | None = None
    infoLevel: Literal["INFO", "DEBUG"]


class SafetyState(Spec):
    """Safety figures."""

    eStop: Literal["AUTOACK", "MANUAL", "REMOTE", "NONE"]
    fieldViolation: bool


class MapState(Spec):
    """A map on the vehicle."""

    mapId: str
    mapVersion: str
    mapDescription: str | None = None
    mapStatus: Literal["ENABLED", "DISABLED"]


class State(Header):
    """``state``: everything the vehicle reports about itself."""

    maps: list[MapState] | None = None
    orderId: str
    orderUpdateId: int
    zoneSetId: str | None = None
    lastNodeId: str
    lastNodeSequenceId: int
    driving: bool
    paused: bool | None = None
    newBaseRequest: bool | None = None
    distanceSinceLastNode: float | None = None
    operatingMode: Literal["AUTOMATIC", "SEMIAUTOMATIC", "MANUAL", "SERVICE", "TEACHIN"]
    nodeStates: list[NodeState]
    edgeStates: list[EdgeState]
    agvPosition: AgvPosition | None = None
    velocity: Velocity | None = None
    loads: list[Load] | None = None
    actionStates: list[ActionState]
    batteryState: BatteryState
    errors: list[Error]
    information: list[Information] | None = None
    safetyState: SafetyState


#: The spec model of each topic.
SPEC_MODELS: dict[str, type[Header]] = {
    "state": State,
    "connection": Connection,
    "order": Order,
    "instantActions": InstantActions,
}
