"""AMR fleets (VDA 5050) → ``move`` / ``exception`` / ``device_status`` events.

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

A load pickup is not a business event (a WMS books ``pick`` as an
inventory pick): it starts a carry, which the drop ends with one ``move``
(``data.container``, ``from`` the pickup station, ``to`` the drop station,
``picked_at`` the time of the state that showed the pickup finished,
``vehicle``). The carry is kept in the vehicle's recognizer note
(``RecognizerNote``), written in the same store transaction as the events
of the same message, with the actions already reported in the current order
and the open conditions (``gateway.recognizers.amr_conditions``): a gateway
killed between pickup and drop restores it at start (``restore``), so the
move after the restart is complete and nothing reported is reported again.

When the order was never seen (the gateway started mid-order) or arrives
after the state, the state itself is the fallback: ``actionType`` from the
action state, the station from ``lastNodeId`` (node actions run where the
vehicle stands), the load from the ``loads`` that appeared (pick) or
disappeared (drop) since the previous state. A pickup the gateway did not
see happen (it was down) is dated and placed by the first state it sees.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.events import Event, Priority, Signal, format_time, make_event_id
from gateway.core.records import RecognizerNote, Record
from gateway.core.reports import (
    BROKEN_STATES,
    ActionPlan,
    ActionStatus,
    ConnectionReport,
    PlannedAction,
    StateReport,
    VehicleError,
)
from gateway.recognizers.amr_conditions import Thresholds, conditions_of
from gateway.recognizers.amr_vehicle import (
    MAX_CARRIED,
    MAX_NOTED_PLANS,
    MAX_PLANNED_ACTIONS,
    MAX_REPORTED,
    NOTE_PREFIX,
    Carry,
    Vehicle,
    note_of,
    read_note,
)

__all__ = [
    "BROKEN_STATES", "ActionPlan", "ActionStatus", "AmrRecognizer", "ConnectionReport",
    "PlannedAction", "StateReport", "VehicleError",
]

_STATUS_NAMES = {"ONLINE": "online", "OFFLINE": "offline", "CONNECTIONBROKEN": "connection_broken",
                 "CONNECTION_BROKEN": "connection_broken"}


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
    #: Battery percent below which ``amr_battery_low`` is raised (``None``: not watched).
    battery_low: float | None = None
    #: Battery percent at or above which it is cleared (``None``: ``battery_low``).
    battery_clear: float | None = None
    #: States missed between two seen ones (headerId gaps).
    state_gaps: int = 0
    #: States whose headerId went backwards (the vehicle restarted its counter).
    header_resets: int = 0
    #: Finished actions that are neither pick nor drop, or of unknown type.
    unclassified: int = 0
    evicted_vehicles: int = 0
    _vehicles: OrderedDict[tuple[str, str], Vehicle] = field(default_factory=OrderedDict,
                                                               repr=False)

    # -- public -------------------------------------------------------------------------

    def feed(self, sig: Signal) -> list[Record]:
        """Events (and the vehicle's note when it changed) for one decoded VDA 5050 message."""
        value = sig.value
        if isinstance(value, StateReport):
            return self._state(sig, value)
        if isinstance(value, ConnectionReport):
            return self._connection(sig, value)
        if isinstance(value, ActionPlan):
            return self._plan(value)
        raise TypeError(f"not a VDA 5050 report: {type(value).__name__}")

    def vehicles(self) -> dict[str, dict[str, Any]]:
        """Per vehicle (``manufacturer/serial``): connection, order, actions, loads, conditions."""
        return {f"{m}/{s}": {"connection": v.connection, "order_id": v.order_id,
                             "actions": dict(v.statuses), "loads": list(v.loads or ()),
                             "carrying": [c.load for c in v.carried.values()],
                             "conditions": sorted(v.open)}
                for (m, s), v in self._vehicles.items()}

    def carrying(self) -> int:
        """Loads picked up and not dropped yet, over all vehicles."""
        return sum(len(v.carried) for v in self._vehicles.values())

    def open_conditions(self) -> dict[str, list[str]]:
        """Vehicles with an open condition (e-stop, FATAL error...), with their reasons."""
        return {f"{m}/{s}": sorted(reason for _, reason, _ in v.open.values())
                for (m, s), v in self._vehicles.items() if v.open}

    def restore(self, notes: Mapping[str, bytes]) -> list[str]:
        """Take back the vehicles' notes (``RecognizerNote``) the store kept, at start.

        Returns what was wrong with the notes it could not read (each skipped:
        that vehicle starts without memory, as on a new store).
        """
        problems: list[str] = []
        for key, value in notes.items():
            manufacturer, _, serial = key.removeprefix(NOTE_PREFIX).partition("/")
            if not key.startswith(NOTE_PREFIX) or not serial:
                problems.append(f"{key!r}: not a vehicle note")
                continue
            fresh = Vehicle()
            try:
                read_note(fresh, value, self.load_parameter, self.station_parameter)
            except Exception as err:  # any unreadable note: never a failed start
                problems.append(f"{key!r}: {err!r}")
                continue
            v = self._vehicle(manufacturer, serial)
            self._vehicles[(manufacturer, serial)] = fresh
            fresh.connection, fresh.connection_key = v.connection, v.connection_key
        return problems

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

    def _vehicle(self, manufacturer: str, serial: str,
                 out: list[Record] | None = None) -> Vehicle:
        key = (manufacturer, serial)
        vehicles = self._vehicles
        v = vehicles.get(key)
        if v is None:
            v = vehicles[key] = Vehicle()
            if len(vehicles) > self.max_vehicles:
                (m, s), gone = vehicles.popitem(last=False)
                self.evicted_vehicles += 1
                if gone.note and out is not None:
                    out.append(RecognizerNote(self.device, f"{NOTE_PREFIX}{m}/{s}", None))
        else:
            vehicles.move_to_end(key)
        return v

    def _plan(self, plan: ActionPlan) -> list[Record]:
        out: list[Record] = []
        v = self._vehicle(plan.manufacturer, plan.serial, out)
        planned, noted = v.planned, v.noted_plans
        loads = (*self.pick_actions, *self.drop_actions)
        for action in plan.actions:
            planned[action.action_id] = (plan.order_id, action)
            planned.move_to_end(action.action_id)
            if action.action_type in loads:
                noted[action.action_id] = (
                    plan.order_id, action.action_type, self._param(action, self.load_parameter),
                    self._param(action, self.station_parameter) or action.node_id
                    or action.edge_id)
                noted.move_to_end(action.action_id)
        while len(planned) > MAX_PLANNED_ACTIONS:
            planned.popitem(last=False)
        while len(noted) > MAX_NOTED_PLANS:
            noted.popitem(last=False)
        v.dirty = True
        # Kept with the order's commit: after a restart the drop still knows its order.
        note = self._note(plan.manufacturer, plan.serial, v)
        if note is not None:
            out.append(note)
        return out

    def _state(self, sig: Signal, st: StateReport) -> list[Record]:
        events: list[Record] = []
        v = self._vehicle(st.manufacturer, st.serial, events)
        if v.last_header is not None:
            if st.header_id > v.last_header + 1:
                self.state_gaps += st.header_id - v.last_header - 1
            elif st.header_id < v.last_header:
                self.header_resets += 1
        v.last_header = st.header_id
        if st.order_id != v.order_id:
            # Action ids are unique within an order: what was reported is of the old one.
            prefix = f"{st.manufacturer}/{st.serial}/{st.order_id}/"
            v.reported = OrderedDict((k, None) for k in v.reported if k.startswith(prefix))
            v.order_id = st.order_id
            v.dirty = True
        for action in st.actions:
            if action.status == "FINISHED" or action.status == "FAILED":
                key = f"{st.manufacturer}/{st.serial}/{st.order_id}/{action.action_id}"
                if action.status == "FAILED":
                    key += ":failed"
                if key not in v.reported:
                    self._remember(v, key)
                    v.noted_plans.pop(action.action_id, None)
                    ev = self._terminal(sig, st, v, action, key)
                    if ev is not None:
                        events.append(ev)
        events += self._conditions(sig, st, v)
        v.statuses = {a.action_id: a.status for a in st.actions}
        v.loads = st.loads
        note = self._note(st.manufacturer, st.serial, v)
        if note is not None:
            events.append(note)
        return events

    def _remember(self, v: Vehicle, key: str) -> None:
        v.dirty = True
        v.reported[key] = None
        if len(v.reported) > MAX_REPORTED:
            v.reported.popitem(last=False)

    def _note(self, manufacturer: str, serial: str, v: Vehicle) -> RecognizerNote | None:
        """The vehicle's note, when what it holds changed (``None`` value: delete it)."""
        if not v.dirty:
            return None
        v.dirty = False
        value = note_of(v)
        if value == v.note:
            return None
        v.note = value
        return RecognizerNote(self.device, f"{NOTE_PREFIX}{manufacturer}/{serial}",
                              value or None)

    def _conditions(self, sig: Signal, st: StateReport, v: Vehicle) -> list[Event]:
        """Raise what the state shows newly, clear what it no longer shows."""
        low, charge = self.battery_low, st.battery_charge
        if (not v.open and not st.errors and not st.field_violation
                and (st.estop is None or st.estop == "NONE")
                and (low is None or charge is None or charge >= low)):
            return []  # the common state: nothing open, nothing to open
        now = conditions_of(st, v.open, Thresholds(low, self.battery_clear))
        if not now and not v.open:
            return []
        if now.keys() != v.open.keys():
            v.dirty = True
        occurred = sig.source_time if sig.source_time is not None else sig.receive_time
        base = {"amr": st.serial, "vehicle": st.serial, "manufacturer": st.manufacturer,
                "order_id": st.order_id or None, "header_id": st.header_id,
                "station": st.last_node_id or None}
        out: list[Event] = []
        stamp = round(occurred * 1000)
        for name, cond in now.items():
            if name in v.open:
                continue
            key = f"amr:{st.manufacturer}/{st.serial}/{name}@{stamp}"
            v.open[name] = (key, cond.reason, cond.data)
            out.append(Event.create(
                site=self.site, device=self.device, type="exception", source_key=key,
                occurred_at=occurred, observed_at=sig.receive_time, priority=Priority.EXCEPTION,
                data={"reason": cond.reason, **base, **cond.data}))
        for name in [n for n in v.open if n not in now]:
            key, reason, data = v.open.pop(name)
            if name == "battery_low":  # the clear says the charge that cleared it
                data = {**data, "battery_charge": st.battery_charge, "charging": st.charging}
            out.append(Event.create(
                site=self.site, device=self.device, type="exception",
                source_key=f"{key}:cleared", occurred_at=occurred,
                observed_at=sig.receive_time, priority=Priority.EXCEPTION,
                data={"reason": f"{reason}_cleared", **base, **data,
                      "raised_event_id": make_event_id(self.site, self.device, key)}))
        return out

    def _terminal(self, sig: Signal, st: StateReport, v: Vehicle, action: ActionStatus,
                  key: str) -> Event | None:
        entry = v.planned.get(action.action_id)
        plan = entry[1] if entry is not None else None
        mapping = "state" if entry is None else ("instant" if entry[0] is None else "order")
        action_type = plan.action_type if plan is not None else action.action_type
        occurred = sig.source_time if sig.source_time is not None else sig.receive_time
        base = {"vehicle": st.serial, "manufacturer": st.manufacturer, "order_id": st.order_id,
                "action_id": action.action_id, "action_type": action_type, "mapping": mapping}
        if action.status == "FAILED":
            errors = [e for e in st.errors if action.action_id in e.action_ids] or list(st.errors)
            load = self._param(plan, self.load_parameter)
            data = {"reason": "amr_action_failed", "amr": st.serial, **base,
                    "container": load, "station": self._station(plan, st),
                    "result_description": action.result_description,
                    "errors": [e.to_dict() for e in errors]}
            return Event.create(site=self.site, device=self.device, type="exception",
                                source_key=f"action:{key}", occurred_at=occurred,
                                observed_at=sig.receive_time, data=data,
                                correlation_id=None if load is None else f"container:{load}",
                                priority=Priority.EXCEPTION)
        if action_type in self.pick_actions:
            self._pickup(st, v, plan, action, occurred)
            return None
        if action_type in self.drop_actions:
            load = self._param(plan, self.load_parameter) or self._dropped_load(v, st)
            carry = self._take_carry(v, load)
            if carry is not None and load is None:
                load = carry.load
            origin = carry.station if carry is not None else self._ordered_origin(v, load)
            return Event.create(site=self.site, device=self.device, type="move",
                                source_key=f"action:{key}", occurred_at=occurred,
                                observed_at=sig.receive_time,
                                correlation_id=None if load is None else f"container:{load}",
                                data={"container": load, "from": origin,
                                      "to": self._station(plan, st),
                                      "picked_at": None if carry is None
                                      else format_time(carry.picked_at),
                                      "pick_action_id": None if carry is None
                                      else carry.action_id, **base})
        self.unclassified += 1
        return None

    def _pickup(self, st: StateReport, v: Vehicle, plan: PlannedAction | None,
                action: ActionStatus, occurred: float) -> None:
        """Start a carry (kept in the vehicle's note); a restored one is kept as it was."""
        if any(c.order_id == st.order_id and c.action_id == action.action_id
               for c in v.carried.values()):
            return  # the gateway restarted: the note has it, with the real time and place
        load = self._param(plan, self.load_parameter) or self._picked_load(v, st)
        key = load or ""
        v.carried[key] = Carry(load, self._station(plan, st), occurred, st.order_id,
                               action.action_id)
        v.carried.move_to_end(key)
        if len(v.carried) > MAX_CARRIED:
            v.carried.popitem(last=False)

    def _connection(self, sig: Signal, c: ConnectionReport) -> list[Record]:
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
        base = {"amr": c.serial, "vehicle": c.serial, "manufacturer": c.manufacturer,
                "header_id": c.header_id}
        events: list[Record] = [Event.create(
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
        """A parameter of the planned action as a string (``None``: not given, empty)."""
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
    def _picked_load(v: Vehicle, st: StateReport) -> str | None:
        now = st.loads or ()
        new = [x for x in now if x not in (v.loads or ())]
        if len(new) == 1:
            return new[0]
        return now[0] if len(now) == 1 else None

    @staticmethod
    def _dropped_load(v: Vehicle, st: StateReport) -> str | None:
        now = st.loads or ()
        gone = [x for x in (v.loads or ()) if x not in now]
        if len(gone) == 1:
            return gone[0]
        carried = [k for k in v.carried if k not in now]
        if len(carried) == 1 and carried[0]:
            return carried[0]
        return None

    @staticmethod
    def _take_carry(v: Vehicle, load: str | None) -> Carry | None:
        """The carry the drop of ``load`` ends (the only one, when the load is unknown)."""
        key = load or ""
        if key in v.carried:
            return v.carried.pop(key)
        if load is None and len(v.carried) == 1:
            return v.carried.popitem()[1]
        return None

    def _ordered_origin(self, v: Vehicle, load: str | None) -> str | None:
        """Where the order said ``load`` would be picked (no pickup was seen)."""
        if load is not None:
            for _, planned in reversed(v.planned.values()):
                if (planned.action_type in self.pick_actions
                        and self._param(planned, self.load_parameter) == load):
                    station = self._param(planned, self.station_parameter)
                    return station or planned.node_id or planned.edge_id
        return None
