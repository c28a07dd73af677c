"""AMR fleets (VDA 5050) → ``pick`` / ``move`` / ``exception`` / ``device_status`` events.

Input signals, one per VDA 5050 message (the driver decodes them):

- ``order`` / ``instantActions`` (value ``ActionPlan``): what each action id
  *means* — its type, its parameters, the node or edge it belongs to;
- ``state`` (value ``StateReport``): action statuses, loads, errors;
- ``connection`` (value ``ConnectionReport``): ONLINE / OFFLINE / broken.

Events come from diffing consecutive states of one vehicle. State messages
travel at QoS 0, so some are lost: an action is reported as soon as a state
shows it terminal (``FINISHED`` or ``FAILED``), whatever statuses were missed
before, and never again while it stays so. The event id is derived from the
vehicle, the state's ``orderId`` and the ``actionId`` — all physical values —
so a state re-read after a gateway restart yields the same ids.

When the order was never seen (the gateway started mid-order) or arrives
after the state, the state itself is the fallback: ``actionType`` from the
action state, the station from ``lastNodeId`` (node actions run where the
vehicle stands), the load from the ``loads`` that appeared (pick) or
disappeared (drop) since the previous state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from gateway.core.events import Event, Priority, Signal
from gateway.core.reports import (
    BROKEN_STATES,
    ActionPlan,
    ActionStatus,
    ConnectionReport,
    PlannedAction,
    StateReport,
    VehicleError,
)

__all__ = [
    "BROKEN_STATES", "ActionPlan", "ActionStatus", "AmrRecognizer", "ConnectionReport",
    "PlannedAction", "StateReport", "VehicleError",
]

#: Planned actions (from orders and instant actions) remembered per vehicle.
MAX_PLANNED_ACTIONS = 1024
#: Terminal outcomes remembered per vehicle (so a repeated state emits nothing).
MAX_REPORTED = 1024
#: Loads remembered per vehicle between their pick and their drop.
MAX_CARRIED = 64

_STATUS_NAMES = {"ONLINE": "online", "OFFLINE": "offline", "CONNECTIONBROKEN": "connection_broken",
                 "CONNECTION_BROKEN": "connection_broken"}


@dataclass(slots=True)
class _Vehicle:
    planned: OrderedDict[str, tuple[str | None, PlannedAction]] = field(
        default_factory=OrderedDict)
    reported: OrderedDict[str, None] = field(default_factory=OrderedDict)
    carried: OrderedDict[str, str | None] = field(default_factory=OrderedDict)
    loads: tuple[str, ...] | None = None
    statuses: dict[str, str] = field(default_factory=dict)
    order_id: str = ""
    connection: str | None = None
    connection_key: str | None = None
    last_header: int | None = None


@dataclass(slots=True)
class AmrRecognizer:
    """Turns the VDA 5050 messages of one fleet (many vehicles) into events.

    Memory is bounded: at most ``max_vehicles`` vehicles (the least recently
    heard is forgotten first), and per vehicle ``MAX_PLANNED_ACTIONS``,
    ``MAX_REPORTED`` and ``MAX_CARRIED`` entries.
    """

    site: str
    device: str
    pick_actions: Collection[str] = ("pick",)
    drop_actions: Collection[str] = ("drop",)
    station_parameter: str = "stationName"
    load_parameter: str = "loadId"
    max_vehicles: int = 10_000
    #: States missed between two seen ones (headerId gaps).
    state_gaps: int = 0
    #: States whose headerId went backwards (the vehicle restarted its counter).
    header_resets: int = 0
    #: Finished actions that are neither pick nor drop, or of unknown type.
    unclassified: int = 0
    evicted_vehicles: int = 0
    _vehicles: OrderedDict[tuple[str, str], _Vehicle] = field(default_factory=OrderedDict,
                                                               repr=False)

    # -- public -------------------------------------------------------------------------

    def feed(self, sig: Signal) -> list[Event]:
        """Events for one decoded VDA 5050 message."""
        value = sig.value
        if isinstance(value, StateReport):
            return self._state(sig, value)
        if isinstance(value, ConnectionReport):
            return self._connection(sig, value)
        if isinstance(value, ActionPlan):
            self._plan(value)
            return []
        raise TypeError(f"not a VDA 5050 report: {type(value).__name__}")

    def vehicles(self) -> dict[str, dict[str, Any]]:
        """Per vehicle (``manufacturer/serial``): connection, order, action statuses."""
        return {f"{m}/{s}": {"connection": v.connection, "order_id": v.order_id,
                             "actions": dict(v.statuses), "loads": list(v.loads or ())}
                for (m, s), v in self._vehicles.items()}

    def connection_counts(self) -> dict[str, int]:
        """How many vehicles are in each connection state (``unknown``: none seen yet)."""
        counts: dict[str, int] = {}
        for v in self._vehicles.values():
            key = _STATUS_NAMES.get(v.connection or "", "unknown")
            counts[key] = counts.get(key, 0) + 1
        return counts

    def connection_of(self, manufacturer: str, serial: str) -> str | None:
        """The vehicle's last connection state (``None``: none seen)."""
        v = self._vehicles.get((manufacturer, serial))
        return None if v is None else v.connection

    def broken(self) -> list[str]:
        """Vehicles whose last connection message says the connection broke."""
        return [f"{m}/{s}" for (m, s), v in self._vehicles.items()
                if v.connection in BROKEN_STATES]

    # -- messages ------------------------------------------------------------------------

    def _vehicle(self, manufacturer: str, serial: str) -> _Vehicle:
        key = (manufacturer, serial)
        vehicles = self._vehicles
        v = vehicles.get(key)
        if v is None:
            v = vehicles[key] = _Vehicle()
            if len(vehicles) > self.max_vehicles:
                vehicles.popitem(last=False)
                self.evicted_vehicles += 1
        else:
            vehicles.move_to_end(key)
        return v

    def _plan(self, plan: ActionPlan) -> None:
        planned = self._vehicle(plan.manufacturer, plan.serial).planned
        for action in plan.actions:
            planned[action.action_id] = (plan.order_id, action)
            planned.move_to_end(action.action_id)
        while len(planned) > MAX_PLANNED_ACTIONS:
            planned.popitem(last=False)

    def _state(self, sig: Signal, st: StateReport) -> list[Event]:
        v = self._vehicle(st.manufacturer, st.serial)
        if v.last_header is not None:
            if st.header_id > v.last_header + 1:
                self.state_gaps += st.header_id - v.last_header - 1
            elif st.header_id < v.last_header:
                self.header_resets += 1
        v.last_header = st.header_id
        v.order_id = st.order_id
        events: list[Event] = []
        for action in st.actions:
            if action.status == "FINISHED" or action.status == "FAILED":
                key = f"{st.manufacturer}/{st.serial}/{st.order_id}/{action.action_id}"
                if action.status == "FAILED":
                    key += ":failed"
                if key not in v.reported:
                    self._remember(v, key)
                    ev = self._terminal(sig, st, v, action, key)
                    if ev is not None:
                        events.append(ev)
        v.statuses = {a.action_id: a.status for a in st.actions}
        v.loads = st.loads
        return events

    def _remember(self, v: _Vehicle, key: str) -> None:
        v.reported[key] = None
        if len(v.reported) > MAX_REPORTED:
            v.reported.popitem(last=False)

    def _terminal(self, sig: Signal, st: StateReport, v: _Vehicle, action: ActionStatus,
                  key: str) -> Event | None:
        entry = v.planned.get(action.action_id)
        plan = entry[1] if entry is not None else None
        mapping = "state" if entry is None else ("instant" if entry[0] is None else "order")
        action_type = plan.action_type if plan is not None else action.action_type
        occurred = sig.source_time if sig.source_time is not None else sig.receive_time
        base = {"amr": st.serial, "manufacturer": st.manufacturer, "order_id": st.order_id,
                "action_id": action.action_id, "action_type": action_type, "mapping": mapping}
        if action.status == "FAILED":
            errors = [e for e in st.errors if action.action_id in e.action_ids] or list(st.errors)
            data = {"reason": "amr_action_failed", **base,
                    "load": self._param(plan, self.load_parameter),
                    "station": self._station(plan, st),
                    "result_description": action.result_description,
                    "errors": [e.to_dict() for e in errors]}
            return Event.create(site=self.site, device=self.device, type="exception",
                                source_key=f"action:{key}", occurred_at=occurred,
                                observed_at=sig.receive_time, data=data,
                                priority=Priority.EXCEPTION)
        if action_type in self.pick_actions:
            load = self._param(plan, self.load_parameter) or self._picked_load(v, st)
            station = self._station(plan, st)
            v.carried[load or ""] = station
            v.carried.move_to_end(load or "")
            if len(v.carried) > MAX_CARRIED:
                v.carried.popitem(last=False)
            return Event.create(site=self.site, device=self.device, type="pick",
                                source_key=f"action:{key}", occurred_at=occurred,
                                observed_at=sig.receive_time,
                                correlation_id=None if load is None else f"load:{load}",
                                data={"load": load, "station": station, **base})
        if action_type in self.drop_actions:
            load = self._param(plan, self.load_parameter) or self._dropped_load(v, st)
            origin = self._origin(v, load)
            return Event.create(site=self.site, device=self.device, type="move",
                                source_key=f"action:{key}", occurred_at=occurred,
                                observed_at=sig.receive_time,
                                correlation_id=None if load is None else f"load:{load}",
                                data={"load": load, "from": origin,
                                      "to": self._station(plan, st), **base})
        self.unclassified += 1
        return None

    def _connection(self, sig: Signal, c: ConnectionReport) -> list[Event]:
        v = self._vehicle(c.manufacturer, c.serial)
        stamp = "" if sig.source_time is None else str(round(sig.source_time * 1000))
        key = f"connection:{c.manufacturer}/{c.serial}/{c.header_id}@{stamp}"
        v.connection = c.state
        if key == v.connection_key:
            return []  # the same message again (a retained copy after a resubscribe)
        v.connection_key = key
        broken = c.state in BROKEN_STATES
        # A last will is composed when the vehicle connects, so its timestamp is
        # that of the connect; the break itself is when the broker sent it.
        occurred = sig.receive_time if broken or sig.source_time is None else sig.source_time
        base = {"amr": c.serial, "manufacturer": c.manufacturer, "header_id": c.header_id}
        events = [Event.create(
            site=self.site, device=self.device, type="device_status", source_key=key,
            occurred_at=occurred, observed_at=sig.receive_time,
            data={"status": _STATUS_NAMES.get(c.state, c.state.lower()),
                  "connection_state": c.state, **base},
        )]
        if broken:
            events.append(Event.create(
                site=self.site, device=self.device, type="exception",
                source_key=f"{key}:broken", occurred_at=occurred, observed_at=sig.receive_time,
                priority=Priority.EXCEPTION,
                data={"reason": "amr_connection_broken", "connection_state": c.state,
                      "order_id": v.order_id or None, **base},
            ))
        return events

    # -- where and what -----------------------------------------------------------------

    @staticmethod
    def _param(plan: PlannedAction | None, name: str) -> str | None:
        if plan is None:
            return None
        value = plan.params.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value != "":
            return str(value)
        return None

    def _station(self, plan: PlannedAction | None, st: StateReport) -> str | None:
        """Station parameter, else the action's node, else its edge, else ``lastNodeId``."""
        station = self._param(plan, self.station_parameter)
        if station is not None:
            return station
        if plan is not None and (plan.node_id or plan.edge_id):
            return plan.node_id or plan.edge_id
        return st.last_node_id or None

    @staticmethod
    def _picked_load(v: _Vehicle, st: StateReport) -> str | None:
        now = st.loads or ()
        new = [x for x in now if x not in (v.loads or ())]
        if len(new) == 1:
            return new[0]
        return now[0] if len(now) == 1 else None

    @staticmethod
    def _dropped_load(v: _Vehicle, st: StateReport) -> str | None:
        now = st.loads or ()
        gone = [x for x in (v.loads or ()) if x not in now]
        if len(gone) == 1:
            return gone[0]
        carried = [k for k in v.carried if k not in now]
        if len(carried) == 1 and carried[0]:
            return carried[0]
        return None

    def _origin(self, v: _Vehicle, load: str | None) -> str | None:
        """Where the dropped load was picked: remembered pick, else the ordered pick."""
        key = load or ""
        if key in v.carried:
            return v.carried.pop(key)
        if load is None and len(v.carried) == 1:
            return v.carried.popitem()[1]
        if load is not None:
            for _, planned in reversed(v.planned.values()):
                if (planned.action_type in self.pick_actions
                        and self._param(planned, self.load_parameter) == load):
                    station = self._param(planned, self.station_parameter)
                    return station or planned.node_id or planned.edge_id
        return None
