"""The mapping engine: a device's signals → events, as its mapping says (pure: no I/O, no clock).

``MappingRecognizer`` sits in the recognizer slot of the ingest pipeline
(``feed(signal)``, ``feed_poll(signals, t)``). Per signal:

1. a non-object value is remembered as the point's current value (triggers
   and rules may read any point);
2. the first event rule whose ``on`` and ``when`` match makes one event, or a
   dead letter naming the field and the value;
3. the triggers whose inputs changed step (counter, edge, tracking,
   threshold, change), then the telemetry entries.

Time comes only from the signals: the source time when the device gives one,
else the receive time the driver stamped. What the engine remembers (last
counter value, last edge, last tracking sequence, debounce window) decides
*whether* an event is made, never its id: ids come from the source key
template, i.e. from the source.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from gateway.core.errors import IngestError
from gateway.core.events import EVENT_TYPES, Event, Priority, Signal, parse_time
from gateway.core.records import IngestDeadLetter, Record
from gateway.mapping.compile import (
    MISSING,
    Ctx,
    Reject,
    condition_fn,
    first_present,
    getter,
    templates_fn,
    value_fn,
)
from gateway.mapping.config import (
    ChangeTrigger,
    CounterTrigger,
    EdgeTrigger,
    EventRule,
    MappingConfig,
    TelemetryPoint,
    ThresholdTrigger,
    TrackingTrigger,
    ValueSpec,
    _Emits,
)
from gateway.mapping.health import MappingHealth

#: Values remembered per debounce (bounds memory whatever the read rate).
MAX_DEBOUNCE_VALUES = 4096
#: Distinct signal points whose matching rules are cached.
MAX_POINT_CACHE = 4096

_PRIORITIES = {"business": Priority.BUSINESS, "exception": Priority.EXCEPTION,
               "telemetry": Priority.TELEMETRY}

#: Builds a dead letter (the pipeline binds its own: counted, logged throttled).
DeadLetterFn = Callable[[IngestError, bytes, Mapping[str, Any]], IngestDeadLetter]


def _sample(value: Any) -> bytes:
    try:
        return json.dumps(value, default=repr, ensure_ascii=False).encode("utf-8", "replace")
    except (TypeError, ValueError, RecursionError):
        return repr(value).encode("utf-8", "replace")


class _Maker:
    """Makes one event from a context: data, type, key, correlation (compiled)."""

    __slots__ = ("corr", "data", "device", "key", "key_text", "priority", "reads", "site",
                 "type_const", "type_fn")

    def __init__(self, site: str, device: str, rule: _Emits,
                 sub: Callable[[str], str] = lambda r: r) -> None:
        self.site, self.device = site, device
        self.data = [(name, value_fn(_sub_spec(spec, sub), name))
                     for name, spec in rule.data.items()]
        self.type_const = rule.type if isinstance(rule.type, str) else None
        self.type_fn = None if isinstance(rule.type, str) else value_fn(
            _sub_spec(rule.type, sub), "type")
        self.key = templates_fn(rule.key)
        self.key_text = " | ".join(rule.key)
        self.corr = None if rule.correlation is None else templates_fn(rule.correlation)
        self.priority = None if rule.priority is None else _PRIORITIES[rule.priority]
        #: The source fields it reads (a dead letter's sample, for triggers).
        self.reads = list(dict.fromkeys(
            sub(r) for r in rule.references() if not r.startswith("$")))

    def make(self, ctx: Ctx) -> tuple[Event, str]:
        """The event and its source key (``Reject`` when the mapping cannot make it)."""
        data = ctx.data
        for name, fn in self.data:
            data[name] = fn(ctx)
        etype = self.type_const
        if etype is None:
            assert self.type_fn is not None
            etype = self.type_fn(ctx)
            if not isinstance(etype, str) or etype not in EVENT_TYPES:
                raise Reject("bad_event_type", f"the event type came out as {etype!r}; "
                             f"expected one of {sorted(EVENT_TYPES)}", "type", etype)
        key = self.key(ctx)
        if key is None:
            raise Reject("missing_field", f"no source key: every alternative of "
                         f"{self.key_text!r} misses a field")
        corr = None if self.corr is None else self.corr(ctx)
        priority = self.priority
        if priority is None:
            priority = EVENT_TYPES[etype]
        return Event.create(site=self.site, device=self.device, type=etype, source_key=key,
                            occurred_at=ctx.occurred, observed_at=ctx.sig.receive_time,
                            data=data, correlation_id=corr, priority=priority), key


def _sub_spec(spec: ValueSpec, sub: Callable[[str], str]) -> ValueSpec:
    if not spec.field:
        return spec
    return spec.model_copy(update={"field": [sub(r) for r in spec.field]})


class _Rule:
    """One compiled event rule."""

    __slots__ = ("conds", "debounce_fn", "maker", "patterns", "recent", "time", "window")

    def __init__(self, site: str, device: str, rule: EventRule,
                 params: Mapping[str, Any]) -> None:
        self.patterns = tuple(rule.on)
        self.conds = [condition_fn(c, params) for c in rule.when]
        self.time = None if rule.time is None else first_present([getter(r) for r in rule.time])
        self.maker = _Maker(site, device, rule)
        self.debounce_fn = None
        self.window = 0.0
        self.recent: OrderedDict[Any, tuple[float, str]] = OrderedDict()
        if rule.debounce is not None:
            w = rule.debounce.window
            self.window = float(params.get(w[7:], 0.0) or 0.0) if isinstance(w, str) else w
            self.debounce_fn = getter(rule.debounce.field)

    def matches(self, point: str) -> bool:
        return any(fnmatchcase(point, p) for p in self.patterns)

    def debounced(self, ctx: Ctx, key: str) -> bool:
        """A repeat of the same value with another key within the window (then dropped)."""
        assert self.debounce_fn is not None
        value = self.debounce_fn(ctx)
        if value is MISSING or not isinstance(value, str | int | float | bool):
            return False
        recent = self.recent
        occurred = ctx.occurred
        seen = recent.get(value)
        if seen is not None and seen[1] != key and 0 <= occurred - seen[0] < self.window:
            return True
        recent[value] = (occurred, key)
        recent.move_to_end(value)
        horizon = occurred - self.window
        while recent:
            oldest = next(iter(recent.values()))
            if oldest[0] >= horizon and len(recent) <= MAX_DEBOUNCE_VALUES:
                break
            recent.popitem(last=False)
        return False


# -- triggers --------------------------------------------------------------------------


class _Trigger:
    """Base of the compiled triggers: its inputs and how it makes events."""

    inputs: frozenset[str]
    point: str

    def __init__(self, site: str, device: str, trig: Any) -> None:
        self.maker = _Maker(site, device, trig)
        self.point = getattr(trig, "point", "")
        self.inputs = frozenset({self.point})

    def step(self, engine: MappingRecognizer, batch: Mapping[str, Signal], t: float,
             out: list[Record]) -> None:
        raise NotImplementedError

    def _emit(self, engine: MappingRecognizer, batch: Mapping[str, Signal], t: float,
              extra: dict[str, Any], out: list[Record], point: str | None = None) -> None:
        engine.emit_trigger(self.maker, point or self.point, batch, t, extra, out)


def _int_value(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


class _CounterStep(_Trigger):
    def __init__(self, site: str, device: str, trig: CounterTrigger) -> None:
        super().__init__(site, device, trig)
        self.wrap = trig.wrap
        self.max_step = trig.max_step
        self.last: int | None = None

    def step(self, engine: MappingRecognizer, batch: Mapping[str, Signal], t: float,
             out: list[Record]) -> None:
        v = _int_value(engine.values.get(self.point))
        if v is None:
            return
        last, wrap = self.last, self.wrap
        self.last = v
        if last is None or v == last:
            return
        if v > last:
            delta = v - last
        elif last >= wrap - wrap // 4 and v < wrap // 4:
            delta = v + wrap - last
        else:
            return  # a reset: follow the counter from here
        made = min(delta, self.max_step)
        missed = delta - made
        for k in range(delta - made + 1, delta + 1):
            self._emit(engine, batch, t, {"$count": (last + k) % wrap, "$previous": last,
                                          "$missed": missed}, out)
            missed = 0


class _EdgeStep(_Trigger):
    def __init__(self, site: str, device: str, trig: EdgeTrigger) -> None:
        super().__init__(site, device, trig)
        self.rising = trig.edge in ("rising", "both")
        self.falling = trig.edge in ("falling", "both")
        self.last: bool | None = None

    def step(self, engine: MappingRecognizer, batch: Mapping[str, Signal], t: float,
             out: list[Record]) -> None:
        v = engine.values.get(self.point)
        if v is None:
            return
        now, last = bool(v), self.last
        self.last = now
        if last is None or now == last:
            return
        if (now and self.rising) or (not now and self.falling):
            self._emit(engine, batch, t, {"$edge": "rising" if now else "falling",
                                          "$previous": last}, out)


class _ThresholdStep(_Trigger):
    def __init__(self, site: str, device: str, trig: ThresholdTrigger) -> None:
        super().__init__(site, device, trig)
        self.above, self.below, self.hysteresis = trig.above, trig.below, trig.hysteresis
        self.raised = False
        self.last: Any = None

    def step(self, engine: MappingRecognizer, batch: Mapping[str, Signal], t: float,
             out: list[Record]) -> None:
        v = engine.values.get(self.point)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return
        previous, self.last = self.last, v
        if self.above is not None:
            beyond = v > self.above
            back = v <= self.above - self.hysteresis
        else:
            assert self.below is not None
            beyond = v < self.below
            back = v >= self.below + self.hysteresis
        if not self.raised and beyond:
            self.raised = True
            self._emit(engine, batch, t, {"$state": "raised", "$previous": previous}, out)
        elif self.raised and back:
            self.raised = False
            self._emit(engine, batch, t, {"$state": "cleared", "$previous": previous}, out)


class _ChangeStep(_Trigger):
    def __init__(self, site: str, device: str, trig: ChangeTrigger) -> None:
        super().__init__(site, device, trig)
        self.initial = trig.initial
        self.last: Any = MISSING

    def step(self, engine: MappingRecognizer, batch: Mapping[str, Signal], t: float,
             out: list[Record]) -> None:
        v = engine.values.get(self.point)
        if v is None:
            return
        last, self.last = self.last, v
        if last is MISSING:
            if self.initial:
                self._emit(engine, batch, t, {"$previous": None}, out)
            return
        if v != last:
            self._emit(engine, batch, t, {"$previous": last}, out)


def _slot_sub(slot: int) -> Callable[[str], str]:
    return lambda ref: ref.replace("{i}", str(slot))


class _TrackingStep(_Trigger):
    """A tracking group or ring: a move per new sequence (see ``TrackingTrigger``)."""

    def __init__(self, site: str, device: str, trig: TrackingTrigger) -> None:
        n = trig.slots
        self.seqs = [trig.seq.replace("{i}", str(i)) for i in range(n)]
        self.makers = [_Maker(site, device, trig, _slot_sub(i)) for i in range(n)]
        self.maker = self.makers[0]
        self.point = self.seqs[0]
        self.inputs = frozenset(self.seqs)
        self.max_step = 100_000
        self.last: int | None = None

    def step(self, engine: MappingRecognizer, batch: Mapping[str, Signal], t: float,
             out: list[Record]) -> None:
        values = engine.values
        ring: dict[int, int] = {}
        for i, name in enumerate(self.seqs):
            seq = _int_value(values.get(name))
            if seq is not None and seq > 0:
                ring[seq] = i
        if not ring:
            return
        newest, oldest = max(ring), min(ring)
        last = self.last
        self.last = newest
        missed = 0
        if last is None or newest < last:
            todo: Sequence[int] = sorted(ring)
        else:
            if last + 1 < oldest:
                missed = oldest - last - 1
            todo = range(max(last + 1, oldest), newest + 1)
        for seq in todo:
            slot = ring.get(seq)
            if slot is None:
                missed += 1
                continue
            engine.emit_trigger(self.makers[slot], self.seqs[slot], batch, t,
                                {"$tracking_seq": seq, "$slot": slot, "$missed": missed}, out)
            missed = 0


_STEPS: Mapping[type, Callable[[str, str, Any], _Trigger]] = {
    CounterTrigger: _CounterStep, EdgeTrigger: _EdgeStep, TrackingTrigger: _TrackingStep,
    ThresholdTrigger: _ThresholdStep, ChangeTrigger: _ChangeStep,
}


class _Telemetry:
    __slots__ = ("deadband", "interval", "last_at", "last_value", "on_change", "on_interval",
                 "point")

    def __init__(self, tp: TelemetryPoint) -> None:
        self.point = tp.point
        self.on_change = tp.on in ("change", "both")
        self.on_interval = tp.on in ("interval", "both")
        self.deadband, self.interval = tp.deadband, tp.interval
        self.last_value: Any = MISSING
        self.last_at = 0.0

    def due(self, v: Any, changed: bool, t: float) -> bool:
        last = self.last_value
        if last is MISSING:
            return True
        if self.on_change and changed and v != last:
            if self.deadband > 0 and isinstance(v, int | float) and isinstance(last, int | float):
                if abs(v - last) >= self.deadband:
                    return True
            else:
                return True
        return self.on_interval and t - self.last_at >= self.interval


# -- the recognizer ------------------------------------------------------------------

#: Device settings a mapping reads as ``$param.NAME`` (when the device has them set).
DEVICE_PARAMS = ("location", "induct", "debounce", "no_read_codes")


def device_params(device: Any) -> dict[str, Any]:
    """The device's own settings that are mapping params."""
    out = {}
    for name in DEVICE_PARAMS:
        v = getattr(device, name, None)
        if v is not None:
            out[name] = v
    return out



class MappingRecognizer:
    """A device's mapping in the recognizer slot of its ingest pipeline."""

    def __init__(self, site: str, device: str, mapping: MappingConfig, *,
                 params: Mapping[str, Any] | None = None, preset: str | None = None) -> None:
        self.site, self.device = site, device
        self.mapping = mapping
        self.params: dict[str, Any] = {**mapping.params, **(params or {})}
        self.rules = [_Rule(site, device, r, self.params) for r in mapping.events]
        self.triggers = [_STEPS[type(t)](site, device, t) for t in mapping.triggers]
        self.telemetry = [_Telemetry(tp) for tp in mapping.telemetry]
        self.values: dict[str, Any] = {}
        self.health = MappingHealth(preset=preset)
        self._rules_for: dict[str, list[_Rule]] = {}
        self._stepped = bool(self.triggers or self.telemetry)
        self._dead_letter: DeadLetterFn = self._own_dead_letter
        self._pending: tuple[Signal, list[Record], str] | None = None

    @property
    def inputs(self) -> frozenset[str]:
        """Points the mapping reads by name (a poller may skip the others)."""
        return self.mapping.watched()

    def event_fields(self, point: str) -> frozenset[str] | None:
        """The event fields the rules for ``point`` read (``None``: all)."""
        return self.mapping.event_fields(point)

    def bind_dead_letters(self, fn: DeadLetterFn) -> None:
        """Make dead letters with ``fn`` (the pipeline's: counted and logged per device)."""
        self._dead_letter = fn

    def _own_dead_letter(self, err: IngestError, payload: bytes,
                         context: Mapping[str, Any]) -> IngestDeadLetter:
        return IngestDeadLetter(device=self.device, reason=f"{err.kind}: {err.detail}",
                                payload=payload, context=dict(context))

    # -- feeding ---------------------------------------------------------------------

    def feed(self, sig: Signal) -> list[Record]:
        """Events (and dead letters) for one signal."""
        pending = self._pending
        if pending is not None and pending[0] is sig:
            self._pending = None
            return pending[1]
        value = sig.value
        if not isinstance(value, dict):
            self.values[sig.point] = value
        out: list[Record] = []
        self._rules(sig, out)
        if self._stepped:
            self._step({sig.point: sig}, sig.receive_time, out)
        return out

    def feed_poll(self, signals: Sequence[Signal], receive_time: float) -> list[Record]:
        """Events for one poll: the points that changed, read at ``receive_time``."""
        values = self.values
        batch: dict[str, Signal] = {}
        for sig in signals:
            if not isinstance(sig.value, dict):
                values[sig.point] = sig.value
            batch[sig.point] = sig
        out: list[Record] = []
        for sig in signals:
            self._rules(sig, out)
        if self._stepped:
            self._step(batch, receive_time, out)
        return out

    def source_key(self, sig: Signal) -> str:
        """The source key of the event ``sig`` makes (a driver drops repeats by it).

        The event is made here and handed back by the ``feed`` of the same
        signal; a signal the mapping rejects keys on its raw sample's digest.
        """
        out: list[Record] = []
        key = self._rules(sig, out)
        if self._stepped and not isinstance(sig.value, dict):
            self.values[sig.point] = sig.value
            self._step({sig.point: sig}, sig.receive_time, out)
        if key is None:
            from hashlib import sha1

            key = "rejected:" + sha1(_sample(sig.value), usedforsecurity=False).hexdigest()
        self._pending = (sig, out, key)
        return key

    def _rules(self, sig: Signal, out: list[Record]) -> str | None:
        """Apply the first rule for ``sig`` (none for its point: nothing); its source key."""
        rules = self._rules_for.get(sig.point)
        if rules is None:
            rules = self._match(sig.point)
        return self._apply(sig, rules, out) if rules else None

    def _match(self, point: str) -> list[_Rule]:
        rules = [r for r in self.rules if r.matches(point)]
        if len(self._rules_for) < MAX_POINT_CACHE:
            self._rules_for[point] = rules
        return rules

    def _apply(self, sig: Signal, rules: list[_Rule], out: list[Record]) -> str | None:
        value = sig.value
        doc = value if isinstance(value, dict) else None
        source = sig.source_time
        ctx = Ctx(sig, doc, self.values, self.params,
                  source if source is not None else sig.receive_time, source)
        try:
            for rule in rules:
                for cond in rule.conds:
                    if not cond(ctx):
                        break
                else:
                    if rule.time is not None:
                        raw = rule.time(ctx)
                        if raw is not MISSING:
                            try:
                                ctx.source = ctx.occurred = parse_time(raw)
                            except ValueError as err:
                                raise Reject("bad_timestamp", f"time field: {err}", None,
                                             raw) from None
                    event, key = rule.maker.make(ctx)
                    if rule.debounce_fn is not None and rule.window > 0 \
                            and rule.debounced(ctx, key):
                        self.health.debounced += 1
                        return key
                    self.health.made(event.type)
                    out.append(event)
                    return key
            raise Reject("no_rule", f"no mapping rule applies to this {sig.point!r} signal")
        except Reject as err:
            out.append(self._reject(err, sig.point, value))
        return None

    def _step(self, batch: Mapping[str, Signal], t: float, out: list[Record]) -> None:
        for trig in self.triggers:
            if not trig.inputs.isdisjoint(batch):
                trig.step(self, batch, t, out)
        for tp in self.telemetry:
            v = self.values.get(tp.point)
            if v is None:
                continue
            changed = tp.point in batch
            if tp.due(v, changed, t):
                tp.last_value, tp.last_at = v, t
                sig = batch.get(tp.point)
                when = t if sig is None or sig.source_time is None else sig.source_time
                quality = "good" if sig is None else sig.quality
                event = Event.create(
                    site=self.site, device=self.device, type="telemetry",
                    source_key=f"tm:{tp.point}@{round(when * 1000)}", occurred_at=when,
                    observed_at=t if sig is None else sig.receive_time,
                    data={"point": tp.point, "value": v, "quality": quality},
                    priority=Priority.TELEMETRY)
                self.health.made("telemetry")
                out.append(event)

    def emit_trigger(self, maker: _Maker, point: str, batch: Mapping[str, Signal], t: float,
                     extra: dict[str, Any], out: list[Record]) -> None:
        """Make one trigger event, or its dead letter (the trigger's other events go on)."""
        sig = batch.get(point)
        values = self.values
        if sig is None:
            sig = Signal(self.device, point, values.get(point), t)
        source = sig.source_time
        ctx = Ctx(sig, None, values, self.params,
                  source if source is not None else t, source, extra)
        try:
            event, _ = maker.make(ctx)
        except Reject as err:
            sample = {p: values.get(p) for p in dict.fromkeys([point, *maker.reads])}
            out.append(self._reject(err, point, {**sample, **{
                k: v for k, v in extra.items() if k in ("$count", "$tracking_seq", "$edge",
                                                        "$state")}}))
            return
        self.health.made(event.type)
        out.append(event)

    def _reject(self, err: Reject, point: str, sample: Any) -> IngestDeadLetter:
        payload = _sample(sample)
        self.health.rejected(err.kind, err.detail, payload, err.field, err.value, MISSING)
        context: dict[str, Any] = {"point": point}
        if err.field is not None:
            context["field"] = err.field
        if err.value is not MISSING:
            context["value"] = repr(err.value)[:200]
        return self._dead_letter(IngestError(err.kind, err.detail), payload, context)

    # -- status ----------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The mapping's health for the device's status entry."""
        return {"mapping": self.health.figures(), "debounced": self.health.debounced}
