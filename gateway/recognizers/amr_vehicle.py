"""What the AMR recognizer keeps per vehicle, and the vehicle's recognizer note.

The note (a ``RecognizerNote`` value, JSON) holds what a gateway restart
must not lose and the states do not tell again: the loads on board with
their pickup (station, time, action), the pickups and drops planned and not
ended yet (an order is read once), the actions of the current order already
reported, the open conditions. ``note_of`` writes it, ``read_note`` reads it
back into a fresh ``Vehicle``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway.core.reports import PlannedAction

__all__ = ["MAX_CARRIED", "MAX_NOTED_PLANS", "MAX_PLANNED_ACTIONS", "MAX_REPORTED",
           "NOTE_PREFIX", "Carry", "Vehicle", "note_of", "read_note"]

#: Planned actions (from orders and instant actions) remembered per vehicle.
MAX_PLANNED_ACTIONS = 1024
#: Terminal outcomes remembered per vehicle (so a repeated state emits nothing).
MAX_REPORTED = 1024
#: Loads remembered per vehicle between their pickup and their drop.
MAX_CARRIED = 64
#: Planned pickups and drops kept in a vehicle's note (the latest ones).
MAX_NOTED_PLANS = 16
#: Prefix of a vehicle's recognizer note key (``vehicle:<manufacturer>/<serial>``).
NOTE_PREFIX = "vehicle:"


@dataclass(frozen=True, slots=True)
class Carry:
    """A load between its pickup and its drop."""

    load: str | None
    station: str | None
    picked_at: float
    order_id: str
    action_id: str


@dataclass(slots=True)
class Vehicle:
    """What the recognizer knows of one vehicle."""

    planned: OrderedDict[str, tuple[str | None, PlannedAction]] = field(
        default_factory=OrderedDict)
    reported: OrderedDict[str, None] = field(default_factory=OrderedDict)
    carried: OrderedDict[str, Carry] = field(default_factory=OrderedDict)
    #: Open conditions: name → (source key of the raise, reason, data of the raise).
    open: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)
    #: Planned pickups and drops not finished yet: action id → (order, type, load, station).
    noted_plans: OrderedDict[str, tuple[str | None, str, str | None, str | None]] = field(
        default_factory=OrderedDict)
    #: The note as last written (``b""``: none), and whether what it holds changed since.
    note: bytes = b""
    dirty: bool = False
    loads: tuple[str, ...] | None = None
    statuses: dict[str, str] = field(default_factory=dict)
    order_id: str = ""
    connection: str | None = None
    connection_key: str | None = None
    last_header: int | None = None


def note_of(v: Vehicle) -> bytes:
    """The vehicle's note (``b""``: nothing to keep)."""
    if not (v.carried or v.open or v.reported or v.noted_plans):
        return b""
    doc = {"order_id": v.order_id, "reported": list(v.reported),
           "plans": [[aid, *entry] for aid, entry in v.noted_plans.items()],
           "carried": [{"load": c.load, "from": c.station, "picked_at": c.picked_at,
                        "order_id": c.order_id, "action_id": c.action_id}
                       for c in v.carried.values()],
           "open": {name: {"key": key, "reason": reason, "data": data}
                    for name, (key, reason, data) in v.open.items()}}
    return json.dumps(doc, separators=(",", ":")).encode()


def read_note(v: Vehicle, value: bytes, load_parameter: str, station_parameter: str) -> None:
    """Fill ``v`` from its note; raises (``ValueError``, ``AttributeError``...) if unreadable."""
    doc = json.loads(value)
    v.order_id = str(doc["order_id"])
    for k in doc["reported"]:
        v.reported[str(k)] = None
    for aid, order_id, kind, load, station in doc["plans"]:
        v.noted_plans[str(aid)] = (order_id, str(kind), load, station)
        params = {load_parameter: load, station_parameter: station}
        v.planned[str(aid)] = (order_id, PlannedAction(
            str(aid), str(kind), {k: x for k, x in params.items() if x}))
    for c in doc["carried"]:
        carry = Carry(c["load"], c["from"], float(c["picked_at"]), str(c["order_id"]),
                      str(c["action_id"]))
        v.carried[carry.load or ""] = carry
    v.open = {str(name): (str(o["key"]), str(o["reason"]), dict(o["data"]))
              for name, o in doc["open"].items()}
    v.note = bytes(value)
