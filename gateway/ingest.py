"""The ingest pipeline: one per device, between its driver and the store.

A driver speaks its protocol and produces ``Signal``s; everything after is
here, written once for every kind of device:

1. the device's recognizer, picked from ``RECOGNIZERS`` by the device's
   driver and role (a table, not code: a new role is one entry);
2. a recognizer failure becomes an ingest dead letter holding the raw input,
   counted and logged once per device and error type (``IngestErrorLog``);
3. the central identity step (``gateway.core.codes.Identity``): every event
   of a handling unit gets ``data.container`` and ``container:<id>``, scans
   their code's kind;
4. the records go to the store's group commit (``Committer``), and the
   source is acknowledged only after they are committed;
5. messages no device claims are counted (``unrouted``) and logged once.

The recognizer slot is a plain ``feed(signal) -> records`` object, so a
declarative mapping (field maps, value maps, triggers) can stand in for a
hand-written recognizer by registering another entry.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from buffer.service import Backpressure
from gateway.alerts import ClockSkew
from gateway.core.alert import Alert
from gateway.core.codes import Identity
from gateway.core.errors import IngestError
from gateway.core.events import Signal
from gateway.core.protocols import Describe, Handoff
from gateway.core.records import IngestDeadLetter, Record
from gateway.core.reports import BROKEN_STATES
from gateway.core.throttle import LogThrottle
from gateway.mapping.config import resolve_mapping
from gateway.mapping.engine import MappingRecognizer, device_params
from gateway.mapping.stations import resolve_station
from gateway.recognizers.amr import AmrRecognizer
from gateway.recognizers.conveyor import ConveyorMap, ConveyorRecognizer
from gateway.recognizers.pack_station import PackStationRecognizer
from gateway.recognizers.pick_station import PickStationRecognizer
from gateway.recognizers.scanner import ScannerRecognizer, scanner_source_key
from gateway.recognizers.sorter import (
    DIVERT_CONFIRM,
    SCAN,
    SorterRecognizer,
    datachange_source_key,
    divert_source_key,
    scan_source_key,
)

log = structlog.get_logger(__name__)

#: Seconds between two log lines of one (device, kind) of bad input.
LOG_INTERVAL_S = 60.0
#: Vehicles named in an alert line.
_ALERT_NAMES = 5


class IngestErrorLog:
    """Counts bad input per (device, kind), logs it throttled, builds dead letters.

    A peer can send thousands of bad messages a second. The first one of each
    device and kind is logged at once (``ingest_rejected``, with its detail);
    repeats within ``interval_s`` are only counted, and the next line for that
    pair (or the periodic ``flush``) carries ``repeated=N``. Recognizer
    failures (``recognizer_failed``) are throttled per device and exception
    type the same way, and only the first line of each pair has the traceback.
    """

    def __init__(self, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, logger: Any = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.throttle = LogThrottle(log if logger is None else logger, interval_s, clock)
        # Keys whose traceback was logged; bounded by devices x exception types in the code.
        self._traced: set[tuple[str, str, str]] = set()

    def record(self, device: str, err: IngestError, **log_fields: Any) -> None:
        """Count one bad input (logged at once the first time this device has this kind)."""
        key = (device, err.kind)
        self.counts[key] += 1
        self.throttle.log("warning", "ingest_rejected", ("ingest_rejected", device, err.kind),
                          device=device, kind=err.kind, detail=err.detail,
                          total=self.counts[key], **log_fields)

    def failed(self, device: str, err: BaseException, **log_fields: Any) -> IngestError:
        """Log a recognizer failure (throttled) and return the error its dead letter carries."""
        name = type(err).__name__
        key = ("recognizer_failed", device, name)
        extra: dict[str, Any] = {}
        if key not in self._traced:
            self._traced.add(key)
            extra["exc_info"] = err
        self.throttle.log("error", "recognizer_failed", key, device=device, error_type=name,
                          error=repr(err)[:500], **log_fields, **extra)
        return IngestError("recognizer_error", repr(err)[:2000])

    def flush(self) -> int:
        """Write the held-back counts whose interval elapsed; return the lines written."""
        return self.throttle.flush()

    async def flush_every(self) -> None:
        """Flush the held-back counts periodically, until cancelled (run beside a driver)."""
        while True:
            await asyncio.sleep(self.throttle.interval_s / 4)
            self.flush()

    def dead_letter(self, device: str, err: IngestError, payload: bytes,
                    context: Mapping[str, Any]) -> IngestDeadLetter:
        """Count it and keep the raw input whole as an ingest dead letter."""
        self.record(device, err, **{k: v for k, v in context.items() if k in ("topic", "point")})
        return IngestDeadLetter(device=device, reason=f"{err.kind}: {err.detail}",
                                payload=bytes(payload), context=dict(context))

    def for_device(self, device: str) -> dict[str, int]:
        """Counts by kind for one device."""
        return {k: n for (d, k), n in self.counts.items() if d == device}


# -- the recognizer registry ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """How one (driver, role) pair is recognized.

    ``build(site, device_config)`` makes the recognizer: any object with
    ``feed(signal) -> list of records`` (and optionally ``feed_poll``).
    ``figures`` and ``alerts`` read its state for the status API.
    """

    build: Callable[[str, Any], Any]
    figures: Callable[[Any], dict[str, Any]]
    alerts: Callable[[str, Any], list[Alert]] | None = None
    source_key: Callable[[Signal], str] | None = None
    #: The points the recognizer reads (``None``: every point).
    inputs: Callable[[Any], frozenset[str]] | None = None


def _scanner(site: str, dev: Any) -> ScannerRecognizer:
    return ScannerRecognizer(site=site, device=dev.id, debounce_s=dev.debounce,
                             no_read_codes=frozenset(dev.no_read_codes), location=dev.location)


class _Fleet(AmrRecognizer):
    """The AMR recognizer, plus one log line per change of a vehicle's link."""

    __slots__ = ()

    def feed(self, sig: Signal) -> list[Any]:
        """Events for one VDA 5050 message; a vehicle's link breaking or coming back is logged."""
        if sig.point != "connection":
            return AmrRecognizer.feed(self, sig)
        m, s = sig.value.manufacturer, sig.value.serial
        before = self.connection_of(m, s)
        events = AmrRecognizer.feed(self, sig)
        after = self.connection_of(m, s)
        if after in BROKEN_STATES and before not in BROKEN_STATES:
            log.warning("amr_connection_broken", device=self.device, manufacturer=m, serial=s)
        elif before in BROKEN_STATES and after not in BROKEN_STATES:
            log.info("amr_connection_restored", device=self.device, manufacturer=m, serial=s,
                     connection_state=after)
        return events


def _amr(site: str, dev: Any) -> AmrRecognizer:
    return _Fleet(site=site, device=dev.id, pick_actions=frozenset(dev.pick_actions),
                  drop_actions=frozenset(dev.drop_actions),
                  station_parameter=dev.station_parameter, load_parameter=dev.load_parameter,
                  max_vehicles=dev.max_vehicles, battery_low=dev.battery_levels()[0],
                  battery_clear=dev.battery_levels()[1])


def _amr_figures(rec: AmrRecognizer) -> dict[str, Any]:
    return {"vehicles": rec.connection_counts(), "connection_broken": rec.broken()[:20],
            "state_gaps": rec.state_gaps, "header_resets": rec.header_resets,
            "unclassified_actions": rec.unclassified, "evicted_vehicles": rec.evicted_vehicles,
            "carrying": rec.carrying(),
            "open_conditions": dict(list(rec.open_conditions().items())[:20])}


def _names(vehicles: Sequence[str]) -> str:
    extra = len(vehicles) - _ALERT_NAMES
    return ", ".join(vehicles[:_ALERT_NAMES]) + (f" and {extra} more" if extra > 0 else "")


def _amr_alerts(device: str, rec: AmrRecognizer) -> list[Alert]:
    out: list[Alert] = []
    broken = rec.broken()
    if broken:
        out.append(Alert("amr_connection_broken", f"device:{device}",
                         f"fleet {device}: {len(broken)} AMR(s) with a broken connection: "
                         f"{_names(broken)}", figures={"vehicles": broken[:20]}))
    stopped = sorted(rec.open_conditions())
    if stopped:
        out.append(Alert("amr_condition", f"device:{device}:conditions",
                         f"fleet {device}: {len(stopped)} AMR(s) with an open e-stop, field "
                         f"violation, FATAL error or low battery: {_names(stopped)}",
                         figures={"vehicles": stopped[:20]}))
    return out


def _conveyor(site: str, device: Any) -> ConveyorRecognizer:
    roles = device.role_points()

    def one(role: str) -> str | None:
        names = roles.get(role)
        return names[0] if names else None

    points = ConveyorMap(
        heartbeat=one("heartbeat"), state=one("state"), state_count=one("state_count"),
        boot_count=one("boot_count"), fault_active=one("fault_active"),
        fault_code=one("fault_code"), fault_zone=one("fault_zone"),
        fault_count=one("fault_count"), counters=device.counter_moduli(),
        tracking_slots=device.tracking.slots if device.tracking else 0,
    )
    return ConveyorRecognizer(
        site=site, device=device.id, points=points,
        zones={int(k): v for k, v in device.zones.items()},
        jam_codes=frozenset(device.jam_codes),
        counter_report_interval=device.counter_report_interval, location=device.location,
    )


def _conveyor_figures(rec: ConveyorRecognizer) -> dict[str, Any]:
    return {
        "boot": rec.boot, "tracking_seq": rec.tracking_seq, "lost_moves": rec.lost_moves,
        "fault_count": rec.fault_count,
        "open_fault": None if rec.open_fault is None else {
            "fault_count": rec.open_fault[0], "reason": rec.open_fault[1],
            "fault_code": rec.open_fault[2], "zone": rec.zone(rec.open_fault[3]),
            "since": rec.open_since},
    }


def _conveyor_alerts(device: str, rec: ConveyorRecognizer) -> list[Alert]:
    """A jam or fault open at the PLC: one alert until the PLC clears it."""
    if rec.open_fault is None:
        return []
    count, reason, code, zone_number = rec.open_fault
    zone = rec.zone(zone_number)
    jam = reason == "jam"
    where = f" in zone {zone}" if zone else ""
    what = "jammed" if jam else f"fault {code}" if code is not None else "fault"
    message = (f"conveyor {device} {what}{where}" if jam
               else f"conveyor {device}: {what}{where}")
    return [Alert("conveyor_jam" if jam else "conveyor_fault", f"device:{device}", message,
                  since=rec.open_since,
                  figures={"zone": zone, "fault_code": code, "fault_count": count})]


def _sorter(site: str, dev: Any) -> SorterRecognizer:
    return SorterRecognizer(site=site, device=dev.id, induct=dev.induct, location=dev.location)


def _sorter_figures(rec: SorterRecognizer) -> dict[str, Any]:
    return {"moves": rec.moves, "scans": rec.scans, "exceptions": rec.exceptions,
            "data_changes": rec.data_changes}


def _sorter_key(sig: Signal) -> str:
    if sig.point == DIVERT_CONFIRM:
        return divert_source_key(sig)
    if sig.point == SCAN:
        return scan_source_key(sig)
    return datachange_source_key(sig)


def _pick_station(site: str, dev: Any) -> PickStationRecognizer:
    return PickStationRecognizer(site=site, device=dev.id,
                                 config=resolve_station(dev.role, dev.station),
                                 location=getattr(dev, "location", None))


def _pack_station(site: str, dev: Any) -> PackStationRecognizer:
    return PackStationRecognizer(site=site, device=dev.id,
                                 config=resolve_station(dev.role, dev.station),
                                 location=getattr(dev, "location", None))


_PACK_STATION = RoleSpec(_pack_station, lambda rec: rec.figures(), inputs=lambda rec: rec.inputs)
_SCANNER = RoleSpec(_scanner, lambda rec: {"debounced": rec.debounced},
                    source_key=scanner_source_key)
_SORTER = RoleSpec(_sorter, _sorter_figures, source_key=_sorter_key)

#: (driver, role) → how its signals are recognized. Each device model lists the
#: roles its driver can feed in ``ROLES``; every pair has an entry here.
RECOGNIZERS: Mapping[tuple[str, str], RoleSpec] = {
    ("mqtt", "scanner"): _SCANNER,
    ("mqtt", "pick_station"): RoleSpec(_pick_station, lambda rec: rec.figures()),
    ("mqtt", "pack_station"): _PACK_STATION,
    ("modbus", "pack_station"): _PACK_STATION,
    ("vda5050", "amr"): RoleSpec(_amr, _amr_figures, alerts=_amr_alerts),
    ("modbus", "conveyor"): RoleSpec(_conveyor, _conveyor_figures, alerts=_conveyor_alerts,
                                     inputs=lambda rec: rec.points.watched()),
    ("opcua", "sorter"): _SORTER,
    # An induct reader's scans are OPC UA events like a sorter's: same recognizer.
    ("opcua", "scanner"): _SORTER,
}


def _mapped(site: str, dev: Any) -> MappingRecognizer:
    mapping = resolve_mapping(dev.driver, dev.preset, dev.mapping)
    assert mapping is not None
    return MappingRecognizer(site, dev.id, mapping, params=device_params(dev), preset=dev.preset)


#: A device with a mapping or a preset (docs/mapping.md).
MAPPED = RoleSpec(_mapped, lambda rec: rec.figures(), inputs=lambda rec: rec.inputs)
#: Presets that are a built-in recognizer: the (driver, role) whose entry they name.
_STAGES = {"conveyor": ("modbus", "conveyor"), "amr": ("vda5050", "amr")}


def role_spec(device: Any) -> RoleSpec | None:
    """How a device's signals are recognized: its mapping, or its role's built-in recognizer."""
    mapping = resolve_mapping(device.driver, getattr(device, "preset", None),
                              getattr(device, "mapping", None))
    if mapping is None:
        return RECOGNIZERS.get((device.driver, device.role))
    if mapping.stage is not None:
        return RECOGNIZERS.get(_STAGES[mapping.stage])
    return MAPPED


def _raw_as_is(raw: Any) -> tuple[bytes, Mapping[str, Any]]:
    """The default ``describe``: the driver passes ``(payload, context)`` itself."""
    payload, context = raw
    return payload, context


# -- pipelines --------------------------------------------------------------------------


class DevicePipeline:
    """One device's ingest: recognizer, dead letters, hand-off to the store."""

    def __init__(self, site: str, device: Any, committer: Handoff,
                 errors: IngestErrorLog, driver: str, identity: Identity | None = None) -> None:
        spec = role_spec(device)
        if spec is None:
            raise ValueError(f"no recognizer for role {device.role!r} of a "
                             f"{device.driver!r} device ({device.id!r})")
        self.device: str = device.id
        self.driver = driver
        self.spec = spec
        self.recognizer: Any = spec.build(site, device)
        self.inputs: frozenset[str] | None = (
            None if spec.inputs is None else spec.inputs(self.recognizer))
        self.errors = errors
        self._committer = committer
        self.identity = identity or Identity()
        self._identify = self.identity.apply
        use_codes = getattr(self.recognizer, "use_identity", None)
        if use_codes is not None:  # a station tells items from totes by the site's codes
            use_codes(self.identity)
        bind = getattr(self.recognizer, "bind_dead_letters", None)
        if bind is not None:  # a mapping's dead letters are counted like every other
            bind(lambda err, payload, ctx: errors.dead_letter(self.device, err, payload, ctx))
        # Bound once: the per-message path must not build them again.
        self._feed: Callable[[Signal], Sequence[Record]] = self.recognizer.feed
        self._feed_poll: Callable[[Sequence[Signal], float], Sequence[Record]] | None = getattr(
            self.recognizer, "feed_poll", None)
        self._describe: Describe = _raw_as_is
        self._on_saturated: Callable[[], None] | None = None
        self._on_refused: Callable[[], None] | None = None
        #: Inputs that reached the pipeline (messages, notifications, polls with changes).
        self.inputs_seen = 0
        #: Events recognized (before the store drops repeats), since start.
        self.events = 0
        #: How far the device's own clock is from the gateway's.
        self.clock = ClockSkew()

    def _observe(self, sig: Signal, records: Sequence[Record]) -> None:
        self.inputs_seen += 1
        self.events += len(records)
        if sig.source_time is not None:
            self.clock.observe(sig.receive_time, sig.source_time)

    def bind(self, describe: Describe, *, on_saturated: Callable[[], None] | None = None,
             on_refused: Callable[[], None] | None = None) -> None:
        """Set how to describe raw input, and what to do when the store holds back."""
        self._describe = describe
        self._on_saturated = on_saturated
        self._on_refused = on_refused

    def accept(self, sig: Signal, raw: Any, ack: Callable[[], None] | None) -> None:
        """Recognize one signal and hand its records off; ``ack`` runs after they commit."""
        # The hot path (one call per scanner message): hand_off inlined.
        try:
            records = self._identify(self._feed(sig))
            self._observe(sig, records)
        except Exception as err:  # a recognizer bug must not stop ingest
            records = [self._failed(err, raw)]
            self.inputs_seen += 1
        committer = self._committer
        try:
            committer.submit(records, ack)
        except Backpressure:
            self._refused()
            return
        if committer.saturated and self._on_saturated is not None:
            self._on_saturated()

    def reject(self, err: IngestError, raw: Any, ack: Callable[[], None] | None) -> None:
        """Hand off input that could not become a signal, as an ingest dead letter."""
        self.inputs_seen += 1
        payload, context = self._describe(raw)
        self.hand_off([self.errors.dead_letter(self.device, err, payload, context)], ack)

    def recognize(self, sig: Signal, raw: Any) -> Sequence[Record]:
        """The records of one signal (a dead letter when the recognizer fails)."""
        try:
            records = self._identify(self._feed(sig))
        except Exception as err:  # a recognizer bug must not stop ingest
            self.inputs_seen += 1
            return [self._failed(err, raw)]
        self._observe(sig, records)
        return records

    def recognize_poll(self, signals: Sequence[Signal], receive_time: float,
                       raw: Any) -> Sequence[Record]:
        """The records of one poll's changed points (a dead letter when the recognizer fails)."""
        self.inputs_seen += 1
        try:
            if self._feed_poll is not None:
                records = self._feed_poll(signals, receive_time)
            else:
                records = [r for sig in signals for r in self._feed(sig)]
            records = self._identify(records)
        except Exception as err:  # a recognizer bug must not stop polling
            return [self._failed(err, raw)]
        self.events += len(records)
        return records

    def _failed(self, err: Exception, raw: Any) -> IngestDeadLetter:
        payload, context = self._describe(raw)
        fields = {k: v for k, v in context.items() if k in ("topic", "point")}
        error = self.errors.failed(self.device, err, driver=self.driver, **fields)
        return self.errors.dead_letter(self.device, error, payload, context)

    def dead_letter(self, err: IngestError, payload: bytes,
                    context: Mapping[str, Any]) -> IngestDeadLetter:
        """Count bad input and keep it whole as an ingest dead letter."""
        return self.errors.dead_letter(self.device, err, payload, context)

    def hand_off(self, records: Sequence[Record], ack: Callable[[], None] | None) -> bool:
        """Queue records for the next group commit without waiting (``ack`` after commit).

        Returns False when the committer refused them (the driver then waits
        with ``append``, or its source redelivers: see ``bind``).
        """
        committer = self._committer
        try:
            committer.submit(records, ack)
        except Backpressure:
            self._refused()
            return False
        if committer.saturated and self._on_saturated is not None:
            self._on_saturated()
        return True

    def _refused(self) -> None:
        # Cannot happen while the source pauses at the high-water mark; if it
        # does, the driver drops its connection so the source redelivers.
        if self._on_refused is not None:
            log.error("ingest_backpressure", driver=self.driver, device=self.device,
                      pending=self._committer.pending)
            self._on_refused()

    async def append(self, records: Sequence[Record]) -> None:
        """Hand records off and wait until they are committed (or there is room)."""
        await self._committer.append(records)

    @property
    def saturated(self) -> bool:
        """True while the store holds the committer back (stop reading the source)."""
        return self._committer.saturated

    def event_fields(self, point: str) -> frozenset[str] | None:
        """The fields of ``point``'s events the recognizer reads (``None``: every field)."""
        own = getattr(self.recognizer, "event_fields", None)
        return None if own is None else own(point)

    def source_key(self, sig: Signal) -> str:
        """The source key the recognizer derives for ``sig`` (to drop re-read input)."""
        if self.spec.source_key is None:
            own = getattr(self.recognizer, "source_key", None)
            if own is not None:
                key: str = own(sig)
                return key
            raise NotImplementedError(f"no source key for device {self.device!r}")
        return self.spec.source_key(sig)

    def snapshot(self) -> dict[str, Any]:
        """The recognizer's figures and the ingest error counts, for the status API."""
        figures = self.spec.figures(self.recognizer)
        figures["ingest_errors"] = self.errors.for_device(self.device)
        figures["inputs"] = self.inputs_seen
        figures["events"] = self.events
        off = self.clock.offset_s
        figures["clock_offset_s"] = None if off is None else round(off, 3)
        return figures

    def alerts(self) -> list[Alert]:
        """What the recognizer has seen that a site engineer should see now."""
        out = [] if self.spec.alerts is None else self.spec.alerts(self.device, self.recognizer)
        off = self.clock.skewed()
        if off is not None:
            ahead = "behind" if off > 0 else "ahead of"
            out.append(Alert("clock_skew", f"device:{self.device}",
                             f"device {self.device}'s clock is {abs(off):.0f} s {ahead} the "
                             "gateway's: event times are off (check NTP on both)",
                             figures={"clock_offset_s": round(off, 1)}))
        return out


class DriverIngest:
    """The ingest hand-off of one driver: a pipeline per device, one error log."""

    def __init__(self, site: str, devices: Sequence[Any], committer: Handoff, driver: str,
                 *, errors: IngestErrorLog | None = None,
                 pipeline: type[DevicePipeline] | None = None,
                 identity: Identity | None = None) -> None:
        self.driver = driver
        self.errors = errors or IngestErrorLog()
        self._committer = committer
        make = pipeline or DevicePipeline
        self.pipelines = {d.id: make(site, d, committer, self.errors, driver, identity)
                          for d in devices}
        self.unrouted = 0

    def device(self, device_id: str) -> DevicePipeline:
        """The pipeline of one device."""
        return self.pipelines[device_id]

    def unrouted_message(self, topic: str, driver: str) -> None:
        """Count a message no device claims (the first one is logged)."""
        # A subscription that matches no device: a device removed from the config
        # whose subscription lives on in the persistent session.
        if not self.unrouted:
            log.warning("mqtt_message_for_unknown_device", topic=topic, driver=driver,
                        action="acknowledged and dropped; counted in unrouted_messages")
        self.unrouted += 1

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the store takes input again after holding back."""
        self._committer.on_drained(callback)

    async def run(self) -> None:
        """Write held-back ingest error counts periodically, until cancelled."""
        await self.errors.flush_every()



async def restore_notes(drivers: Iterable[object],
                        read: Callable[[str], Awaitable[Mapping[str, bytes]]]) -> int:
    """Hand each recognizer that keeps notes (``RecognizerNote``) its device's notes back.

    Called at start, before any driver runs; returns how many notes were restored.
    """
    restored = 0
    for driver in drivers:
        ingest = getattr(driver, "ingest", None)
        if not isinstance(ingest, DriverIngest):
            continue
        for device, pipe in ingest.pipelines.items():
            restore = getattr(pipe.recognizer, "restore", None)
            if restore is None:
                continue
            notes = await read(device)
            if not notes:
                continue
            problems = restore(notes) or []
            for problem in problems:
                # The vehicle starts without memory, as on a new store: never a crash loop.
                log.warning("recognizer_note_unreadable", device=device, problem=problem)
            restored += len(notes) - len(problems)
    return restored
