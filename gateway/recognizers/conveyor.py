"""Conveyor PLC points → ``move``, ``exception`` and telemetry events.

A conveyor PLC is read by polling, so its signals come in polls: the values
of the points that changed since the previous poll. ``feed_poll`` applies all
of them before looking at the whole picture, because one happening spans
several points (a jam is the fault flag, code, zone and the fault counter).

Event ids come only from what the PLC recorded, never from this object's
memory, so a poll repeated after a reconnect, a PLC restart or a gateway
restart yields the ids it yielded before:

=================  =========================================  ===============
event              source key                                 type
=================  =========================================  ===============
tote move          ``trk:<boot>:<tracking seq>``              move
moves overwritten  ``trk_lost:<boot>:<first>-<last>``         exception
fault raised       ``fault:<boot>:<fault count>``             exception
fault cleared      ``fault_cleared:<boot>:<fault count>``     exception
counter            ``counter:<point>:<boot>:<value>``         telemetry
state change       ``state:<boot>:<state count>``             device_status
=================  =========================================  ===============

``boot`` is the PLC's boot counter: counts and sequences restart from zero
after a cold restart, the boot counter makes their ids new. What the
recognizer remembers (the last sequence, the last fault count) only decides
*which* events to emit: after a gateway restart it starts without memory and
re-emits what the PLC still holds (the tracking ring, the latest fault, each
counter's value) under the same ids, which the store and upstream drop as
repeats.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.core.events import Event, Priority, Signal

#: PackML state numbers (ISA-TR88.00.02) → names.
PACKML_STATES: Final[Mapping[int, str]] = {
    0: "UNDEFINED", 1: "CLEARING", 2: "STOPPED", 3: "STARTING", 4: "IDLE", 5: "SUSPENDED",
    6: "EXECUTE", 7: "STOPPING", 8: "ABORTING", 9: "ABORTED", 10: "HOLDING", 11: "HELD",
    12: "UNHOLDING", 13: "SUSPENDING", 14: "UNSUSPENDING", 15: "RESETTING",
    16: "COMPLETING", 17: "COMPLETE",
}

#: Faults raised and cleared between two polls are reported one by one up to this many.
MAX_MISSED_FAULTS: Final = 1000


def counter_delta(old: int, new: int, modulus: int) -> tuple[int, bool]:
    """Counts between two readings of a counter that wraps at ``modulus``.

    Returns ``(delta, reset)``. A reading below the previous one is a wrap
    when the previous one was in the top quarter of the range and the new one
    is in the bottom quarter (the counter passed ``modulus - 1``); any other
    decrease is a reset, and the new reading is what was counted since.
    """
    if new >= old:
        return new - old, False
    if old >= modulus - modulus // 4 and new < modulus // 4:
        return new + modulus - old, False
    return new, True


@dataclass(frozen=True, slots=True)
class ConveyorMap:
    """Which point plays which role (names as the driver's signals carry them)."""

    heartbeat: str | None = None
    state: str | None = None
    state_count: str | None = None
    boot_count: str | None = None
    fault_active: str | None = None
    fault_code: str | None = None
    fault_zone: str | None = None
    fault_count: str | None = None
    #: Counter point → the value at which it wraps to zero.
    counters: Mapping[str, int] = field(default_factory=dict)
    #: Slots of the tracking ring (points ``tracking[i].seq|tote|from|to``).
    tracking_slots: int = 0

    def watched(self) -> frozenset[str]:
        """Points whose changes matter to the recognizer."""
        names = {self.state, self.state_count, self.boot_count, self.fault_active,
                 self.fault_code, self.fault_zone, self.fault_count, *self.counters}
        for i in range(self.tracking_slots):
            names.update(f"tracking[{i}].{f}" for f in ("seq", "tote", "from", "to"))
        return frozenset(n for n in names if n is not None)


@dataclass(slots=True)
class _Counter:
    last: int
    reported_at: float
    pending: int = 0
    reset: bool = False


@dataclass(slots=True)
class ConveyorRecognizer:
    """Turns the polls of one conveyor PLC into events (see the module doc)."""

    site: str
    device: str
    points: ConveyorMap
    zones: Mapping[int, str] = field(default_factory=dict)
    jam_codes: Collection[int] = (101,)
    counter_report_interval: float = 0.0
    location: str | None = None
    #: Current value of every watched point.
    values: dict[str, Any] = field(default_factory=dict)
    boot: int | None = None
    tracking_seq: int | None = None
    fault_count: int | None = None
    open_fault: tuple[int, str, int | None, int | None] | None = None
    #: Receive time of the poll that first saw the open fault (None: none open).
    open_since: float | None = None
    lost_moves: int = 0
    _state_count: int | None = None
    _counters: dict[str, _Counter] = field(default_factory=dict)

    def feed(self, sig: Signal) -> list[Event]:
        """Events for one signal (a poll in which only this point changed)."""
        return self.feed_poll([sig], sig.receive_time)

    def feed_poll(self, signals: Sequence[Signal], receive_time: float) -> list[Event]:
        """Events for one poll: the points that changed, read at ``receive_time``."""
        values = self.values
        for sig in signals:
            values[sig.point] = sig.value
        raw_boot = values.get(self.points.boot_count) if self.points.boot_count else 0
        boot = int(raw_boot) if raw_boot is not None else (self.boot or 0)
        if self.boot is not None and boot != self.boot:
            # A new boot: every count and sequence starts again; look afresh.
            self.tracking_seq = self.fault_count = self._state_count = None
            self.open_fault = None
            self.open_since = None
            self._counters.clear()
        self.boot = boot
        t = receive_time
        return [*self._faults(t, boot), *self._tracking(t, boot), *self._counter_events(t, boot),
                *self._state(t, boot)]

    # -- zones and events ------------------------------------------------------------

    def zone(self, number: Any) -> str | None:
        """Name of a zone number (0 or missing: outside the conveyor → None)."""
        if not isinstance(number, int) or number <= 0:
            return None
        return self.zones.get(number) or f"Z{number:02d}"

    def _event(self, type: str, key: str, t: float, data: dict[str, Any],
               correlation_id: str | None = None) -> Event:
        return Event.create(site=self.site, device=self.device, type=type, source_key=key,
                            occurred_at=t, observed_at=t, data=data,
                            correlation_id=correlation_id)

    # -- faults ----------------------------------------------------------------------

    def _reason(self, code: int | None) -> str:
        if self.points.fault_code is None:
            return "jam"
        if code is None:
            return "fault"
        return "jam" if code in self.jam_codes else "fault"

    def _raise(self, t: float, boot: int, n: int, code: int | None, zone: int | None,
               missed: bool = False) -> Event:
        data = {"reason": self._reason(code), "zone": self.zone(zone), "zone_number": zone,
                "fault_code": code, "fault_count": n, "boot": boot, "location": self.location}
        if missed:
            data["missed"] = True
        return self._event("exception", f"fault:{boot}:{n}", t, data, f"fault:{boot}:{n}")

    def _clear(self, t: float, boot: int, n: int, reason: str, code: int | None,
               zone: int | None) -> Event:
        data = {"reason": f"{reason}_cleared", "zone": self.zone(zone), "zone_number": zone,
                "fault_code": code, "fault_count": n, "boot": boot, "location": self.location}
        return self._event("exception", f"fault_cleared:{boot}:{n}", t, data, f"fault:{boot}:{n}")

    def _faults(self, t: float, boot: int) -> list[Event]:
        p = self.points
        if p.fault_count is None or self.values.get(p.fault_count) is None:
            return []
        v = self.values
        count = int(v[p.fault_count])
        code = int(v[p.fault_code]) if p.fault_code and v.get(p.fault_code) is not None else None
        zone = int(v[p.fault_zone]) if p.fault_zone and v.get(p.fault_zone) is not None else None
        active = bool(v.get(p.fault_active)) if p.fault_active else bool(code)
        code = code or None  # 0 means "no fault"
        zone = zone or None
        out: list[Event] = []
        last, opened = self.fault_count, self.open_fault
        if last is None or count < last:
            # First look (gateway start, new boot, or a count that went back):
            # report the PLC's latest fault; a repeat of an earlier report has its id.
            if count > 0:
                out.append(self._raise(t, boot, count, code, zone))
                if not active:
                    out.append(self._clear(t, boot, count, self._reason(code), code, zone))
        elif count > last:
            if opened is not None and opened[0] == last:
                out.append(self._clear(t, boot, last, opened[1], opened[2], opened[3]))
            for n in range(max(last + 1, count - MAX_MISSED_FAULTS), count):
                out.append(self._raise(t, boot, n, None, None, missed=True))
                out.append(self._clear(t, boot, n, "fault", None, None))
            out.append(self._raise(t, boot, count, code, zone))
            if not active:
                out.append(self._clear(t, boot, count, self._reason(code), code, zone))
        elif opened is not None and opened[0] == count and not active:
            out.append(self._clear(t, boot, count, opened[1], opened[2], opened[3]))
        if active and count > 0:
            if opened is None or opened[0] != count:
                self.open_since = t
            if opened is None or opened[0] != count or opened[2] is None:
                opened = (count, self._reason(code), code, zone)
            self.open_fault = opened
        else:
            self.open_fault = None
            self.open_since = None
        self.fault_count = count
        return out

    # -- tracking --------------------------------------------------------------------

    def _tracking(self, t: float, boot: int) -> list[Event]:
        slots = self.points.tracking_slots
        if not slots:
            return []
        v = self.values
        ring: dict[int, int] = {}
        for i in range(slots):
            seq = v.get(f"tracking[{i}].seq")
            if isinstance(seq, int) and seq > 0:
                ring[seq] = i
        if not ring:
            return []
        newest, oldest = max(ring), min(ring)
        last = self.tracking_seq
        out: list[Event] = []
        lost: list[int] = []
        if last is None or newest < last:
            todo: Sequence[int] = sorted(ring)
        else:
            if last + 1 < oldest:
                lost = [last + 1, oldest - 1]
            todo = range(max(last + 1, oldest), newest + 1)
        for seq in todo:
            slot = ring.get(seq)
            if slot is None:
                lost = [lost[0] if lost else seq, seq]
                continue
            if lost:
                out.append(self._lost(t, boot, lost[0], lost[1]))
                lost = []
            out.append(self._move(t, boot, seq, slot))
        if lost:
            out.append(self._lost(t, boot, lost[0], lost[1]))
        self.tracking_seq = newest
        return out

    def _move(self, t: float, boot: int, seq: int, slot: int) -> Event:
        v = self.values
        tote = v.get(f"tracking[{slot}].tote")
        container = str(tote) if tote not in (None, "") else None
        data = {"container": container, "from": self.zone(v.get(f"tracking[{slot}].from")),
                "to": self.zone(v.get(f"tracking[{slot}].to")), "seq": seq, "boot": boot,
                "conveyor": self.device, "location": self.location}
        return self._event("move", f"trk:{boot}:{seq}", t, data,
                           f"container:{container}" if container else None)

    def _lost(self, t: float, boot: int, first: int, last: int) -> Event:
        self.lost_moves += last - first + 1
        data = {"reason": "tracking_lost", "first_seq": first, "last_seq": last,
                "count": last - first + 1, "boot": boot, "location": self.location}
        return self._event("exception", f"trk_lost:{boot}:{first}-{last}", t, data)

    # -- counters and state ----------------------------------------------------------

    def _counter_events(self, t: float, boot: int) -> list[Event]:
        out: list[Event] = []
        for name, modulus in self.points.counters.items():
            value = self.values.get(name)
            if value is None:
                continue
            value = int(value)
            st = self._counters.get(name)
            if st is None:
                self._counters[name] = _Counter(last=value, reported_at=t)
                out.append(self._count(t, boot, name, value, None, False))
                continue
            if value != st.last:
                delta, reset = counter_delta(st.last, value, modulus)
                st.pending += delta
                st.reset |= reset
                st.last = value
            if (st.pending or st.reset) and t - st.reported_at >= self.counter_report_interval:
                out.append(self._count(t, boot, name, value, st.pending, st.reset))
                st.pending, st.reset, st.reported_at = 0, False, t
        return out

    def _count(self, t: float, boot: int, name: str, value: int, delta: int | None,
               reset: bool) -> Event:
        data = {"counter": name, "value": value, "delta": delta, "reset": reset, "boot": boot,
                "location": self.location}
        return Event.create(site=self.site, device=self.device, type="telemetry",
                            source_key=f"counter:{name}:{boot}:{value}", occurred_at=t,
                            observed_at=t, data=data, priority=Priority.TELEMETRY)

    def _state(self, t: float, boot: int) -> list[Event]:
        p = self.points
        if p.state is None or p.state_count is None:
            return []
        count, state = self.values.get(p.state_count), self.values.get(p.state)
        if count is None or state is None or count == self._state_count:
            return []
        last, self._state_count = self._state_count, int(count)
        data = {"state": PACKML_STATES.get(int(state), f"STATE_{state}"), "state_code": state,
                "state_count": count,
                "transitions": None if last is None or count < last else count - last,
                "boot": boot, "location": self.location}
        return [self._event("device_status", f"state:{boot}:{count}", t, data)]
