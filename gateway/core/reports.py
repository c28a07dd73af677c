"""Signal vocabulary a driver and its role's recognizer agree on, beyond ``Signal``.

- ``amr`` (VDA 5050): one report per decoded message, the signal's value;
- ``sorter`` (OPC UA): the point names of divert confirms and scans, and the
  divert results a sorter may confirm.

Plain constants and frozen records, so that the driver that produces them and
the recognizer that reads them share a vocabulary without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

#: Divert results a sorter confirms, and the exception reason of each failure.
DIVERT_RESULTS: Final = {
    "diverted": None,
    "no-read": "no_read",
    "no-destination": "no_destination",
    "chute-full": "chute_full",
    "recirculated": "recirculated",
    "lost": "lost",
}
#: Point of a sorter's divert confirm signal.
DIVERT_CONFIRM: Final = "divert_confirm"
#: Point of an induct reader's scan signal.
SCAN: Final = "scan"

#: Connection states meaning the vehicle's link broke (VDA 5050 2.x and 3.0 spellings).
BROKEN_STATES = frozenset({"CONNECTIONBROKEN", "CONNECTION_BROKEN"})


@dataclass(frozen=True, slots=True)
class ActionStatus:
    """One entry of a state's ``actionStates``."""

    action_id: str
    action_type: str | None
    status: str
    result_description: str | None = None


@dataclass(frozen=True, slots=True)
class VehicleError:
    """One active error of a state, with the action ids it references."""

    error_type: str
    level: str | None = None
    description: str | None = None
    action_ids: tuple[str, ...] = ()
    #: Every ``errorReferences`` entry as ``(referenceKey, referenceValue)``.
    references: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """As it appears in an exception event."""
        return {"type": self.error_type, "level": self.level, "description": self.description}


@dataclass(frozen=True, slots=True)
class StateReport:
    """The parts of a ``state`` message the recognizer uses.

    ``loads`` holds the ids of the loads on board; ``None`` when the vehicle
    does not report loads at all (the spec's "cannot determine").
    ``battery_charge`` is ``batteryState.batteryCharge`` (percent), ``estop``
    and ``field_violation`` are ``safetyState``'s (``None`` / ``False`` when
    the state does not carry them).
    """

    manufacturer: str
    serial: str
    header_id: int
    order_id: str
    last_node_id: str
    actions: tuple[ActionStatus, ...]
    loads: tuple[str, ...] | None = None
    errors: tuple[VehicleError, ...] = ()
    battery_charge: float | None = None
    charging: bool | None = None
    estop: str | None = None
    field_violation: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionReport:
    """A ``connection`` message."""

    manufacturer: str
    serial: str
    header_id: int
    state: str


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """An action as ordered: on a node (``node_id``), an edge, or instant (neither)."""

    action_id: str
    action_type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    node_id: str | None = None
    edge_id: str | None = None


@dataclass(frozen=True, slots=True)
class ActionPlan:
    """The actions of an ``order`` (``order_id`` set) or ``instantActions`` message."""

    manufacturer: str
    serial: str
    order_id: str | None
    actions: tuple[PlannedAction, ...]
