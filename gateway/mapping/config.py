"""Config models of a declarative mapping: a device's vendor schema → business events.

A device names a ``preset`` (a mapping shipped in ``gateway/mapping/presets/``),
writes its own ``[devices.mapping]``, or both (its own rules are tried first,
then the preset's; its ``params`` override the preset's). The models import
only ``gateway.core`` and pydantic: ``check`` loads no protocol library.
Reference: docs/mapping.md.

Vocabulary:

- a *reference* names where a value comes from: a source field (an OPC UA
  event field by browse name or ``A/B`` browse path, a JSON dotted path, a
  Modbus point or OPC UA variable by its ``point`` name) or a special value
  (``$device``, ``$point``, ``$value``, ``$time_ms``, ``$param.induct``, ...);
- a *value spec* turns references into one typed value (value maps, ranges,
  defaults, types);
- a *template* is a string with ``{reference}`` placeholders (source keys,
  correlation ids);
- an *event rule* turns one message-like signal (an OPC UA event, an MQTT
  message, one data change) into one event; a *trigger* watches polled or
  sampled values (counter increment, bit edge, tracking group, threshold,
  change); a *telemetry* entry emits a point's value on change or interval.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from gateway.core.config import Duration, Model
from gateway.core.events import EVENT_TYPES

#: Types a value spec can coerce to.
ValueKind = Literal["raw", "string", "text", "int", "float", "bool", "time"]
#: Placeholders of a template: ``{TrackingId}``, ``{$time_ms}``, ``{order.id}``.
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")

#: Specials that come with every signal.
SIGNAL_SPECIALS = frozenset({
    "$device", "$point", "$value", "$quality", "$seq", "$topic", "$digest",
    "$time_ms", "$source_ms", "$receive_ms", "$time",
})
#: Prefixes of parameterized specials (``$data.`` only in templates: the event's own data).
SPECIAL_PREFIXES = ("$param.", "$attr.", "$data.")
#: Specials a trigger adds (which ones depends on its kind).
TRIGGER_SPECIALS: Mapping[str, frozenset[str]] = {
    "counter": frozenset({"$count", "$missed", "$previous"}),
    "edge": frozenset({"$edge", "$previous"}),
    "tracking": frozenset({"$tracking_seq", "$missed", "$slot"}),
    "threshold": frozenset({"$state", "$previous"}),
    "change": frozenset({"$previous"}),
}
#: References that tell two happenings apart (besides the mapping's ``ids``).
DISTINGUISHING = frozenset({
    "$seq", "$digest", "$time_ms", "$source_ms", "$count", "$tracking_seq",
})

Reference = Annotated[str, Field(min_length=1, max_length=256)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _refs_of(template: str) -> list[str]:
    return [m.strip() for m in PLACEHOLDER.findall(template)]


def _check_template(text: str) -> str:
    stripped = PLACEHOLDER.sub("", text)
    if "{" in stripped or "}" in stripped:
        raise ValueError(f"template {text!r} has an unmatched brace")
    return text


Template = Annotated[str, Field(min_length=1, max_length=512), BeforeValidator(_check_template)]
#: One template or alternatives: the first whose placeholders all resolve is used.
Templates = Annotated[list[Template], BeforeValidator(_as_list), Field(min_length=1)]
#: One reference or alternatives: the first present one is used.
References = Annotated[list[Reference], BeforeValidator(_as_list), Field(min_length=1)]


class Range(Model):
    """``min <= value < max`` (either bound may be left out) maps to ``value``."""

    min: float | None = None
    max: float | None = None
    value: Any

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.max <= self.min:
            raise ValueError(f"'max' ({self.max}) must be above 'min' ({self.min})")
        return self


class ValueSpec(Model):
    """Where one value comes from and how it is typed.

    Order: the first present reference of ``field`` (absent or null is
    missing; with ``empty_is_missing`` also ``""``) or ``const``; missing →
    ``default`` when given, a dead letter when ``required``, else null; then
    ``map``/``ranges`` (an unmapped value → ``default`` when given, else a dead
    letter naming the field and the value); then ``type``.
    """

    field: References | None = None
    const: Any = None
    type: ValueKind = "raw"
    #: Exact values (written as TOML keys: ``{0 = "diverted", 1 = "no-read"}``).
    map: dict[str, Any] | None = None
    ranges: list[Range] = []
    default: Any = None
    required: bool = False
    empty_is_missing: bool = False
    #: A value that does not fit ``type`` becomes null instead of a dead letter.
    lenient: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # ``container = "Barcode"`` is ``container = { field = "Barcode" }``.
        if isinstance(data, str | list):
            return {"field": data}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ValueSpec:
        if self.field is None and "const" not in self.model_fields_set:
            raise ValueError("needs 'field' (a source reference) or 'const'")
        if self.field is not None and "const" in self.model_fields_set:
            raise ValueError("'field' and 'const' exclude each other")
        if self.required and "default" in self.model_fields_set:
            raise ValueError("'required' and 'default' exclude each other")
        return self

    @property
    def has_default(self) -> bool:
        """Whether ``default`` was written (``default = ""`` counts)."""
        return "default" in self.model_fields_set

    def references(self) -> list[str]:
        """The references this spec reads."""
        return list(self.field or [])


def _event_type_or_spec(value: Any) -> Any:
    return value if isinstance(value, str) else ValueSpec.model_validate(value)


EventType = Annotated[str | ValueSpec, BeforeValidator(_event_type_or_spec)]
Data = dict[Annotated[str, Field(min_length=1, max_length=64)], ValueSpec]


class Condition(Model):
    """A rule applies only when the value of ``field`` passes these tests.

    ``in``/``not_in`` take a list or a ``$param.`` reference to one; values
    compare as written or as text (``1`` matches ``"1"``).
    """

    field: References
    in_: list[Any] | str | None = Field(default=None, alias="in")
    not_in: list[Any] | str | None = None
    present: bool | None = None
    #: The value compared when the field is missing (absent or null).
    default: Any = None

    model_config = Model.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _some_test(self) -> Condition:
        if self.in_ is None and self.not_in is None and self.present is None:
            raise ValueError("a condition needs 'in', 'not_in' or 'present'")
        for name, v in (("in", self.in_), ("not_in", self.not_in)):
            if isinstance(v, str) and not v.startswith("$param."):
                raise ValueError(f"'{name}' takes a list or a '$param.NAME' reference, got {v!r}")
        return self


def _conditions(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class Debounce(Model):
    """Drop a repeat of the same value of ``field`` within ``window`` (by event time)."""

    field: Reference
    window: Duration | Annotated[str, Field(pattern=r"^\$param\.\w+$")] = 0.5


class _Emits(Model):
    """What an event rule or a trigger makes: type, source key, correlation, data."""

    type: EventType
    key: Templates
    correlation: Templates | None = None
    priority: Literal["business", "exception", "telemetry"] | None = None
    data: Data = {}

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str | ValueSpec) -> str | ValueSpec:
        types = [v] if isinstance(v, str) else [
            t for t in [*(v.map or {}).values(), *(r.value for r in v.ranges),
                        v.default if v.has_default else None, v.const] if t is not None]
        unknown = sorted({str(t) for t in types if t not in EVENT_TYPES})
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; expected some of "
                             f"{sorted(EVENT_TYPES)}")
        return v

    def references(self) -> Iterable[str]:
        """Every reference this rule reads (for validation and the inputs it watches)."""
        if isinstance(self.type, ValueSpec):
            yield from self.type.references()
        for t in [*self.key, *(self.correlation or [])]:
            yield from _refs_of(t)
        for spec in self.data.values():
            yield from spec.references()


class EventRule(_Emits):
    """One message-like signal → one event (the first rule that applies wins)."""

    #: The signal points it applies to (``*`` and ``?`` wildcards): an OPC UA
    #: events entry's ``point``, ``message`` for MQTT, a variable's point name.
    on: References
    when: Annotated[list[Condition], BeforeValidator(_conditions)] = []
    #: Source time of the event (an ISO 8601 string, epoch s/ms or an OPC UA
    #: DateTime); default: the signal's own source time, else the receive time.
    time: References | None = None
    debounce: Debounce | None = None

    def excludes(self, point: str) -> bool:
        """Whether a ``when`` on ``$point`` (with a written list) rules ``point`` out."""
        for c in self.when:
            if c.field != ["$point"]:
                continue
            if isinstance(c.in_, list) and point not in c.in_:
                return True
            if isinstance(c.not_in, list) and point in c.not_in:
                return True
        return False

    def references(self) -> Iterable[str]:
        """Every reference this rule reads."""
        yield from super().references()
        for c in self.when:
            yield from c.field
        yield from self.time or []


class _Trigger(_Emits):
    pass


class CounterTrigger(_Trigger):
    """One event per increment of a counter point, wrap-aware.

    A jump of more than ``max_step`` makes the events of the last ``max_step``
    increments only; the first of them carries ``$missed`` (the rest). A value
    below the previous one that is not a wrap is a reset: no events, the
    counter is followed from there. No event at first sight (nothing is known
    about what came before).
    """

    kind: Literal["counter"]
    point: Reference
    bits: Literal[8, 16, 32, 64] = 32
    modulus: Annotated[int, Field(ge=2)] | None = None
    max_step: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @property
    def wrap(self) -> int:
        """The value at which the counter wraps to zero."""
        return self.modulus if self.modulus is not None else 1 << self.bits


class EdgeTrigger(_Trigger):
    """An event when a bit (any truthy value) rises, falls, or both (``$edge``)."""

    kind: Literal["edge"]
    point: Reference
    edge: Literal["rising", "falling", "both"] = "rising"


class TrackingTrigger(_Trigger):
    """A move per new sequence of a tracking register group (seq + container + from/to).

    With ``slots`` > 1 the group is a ring: each reference holds ``{i}``
    (``tracking[{i}].seq``), the slot number. Every sequence above the last
    one seen is a move, oldest first; a sequence the ring skipped raises
    ``$missed`` on the next move. At first sight every slot's move is made
    (its id comes from its sequence, so a repeat is dropped upstream).
    Sequence 0 or missing is an empty slot.
    """

    kind: Literal["tracking"]
    seq: Reference
    slots: Annotated[int, Field(ge=1, le=1000)] = 1

    @model_validator(mode="after")
    def _slots(self) -> TrackingTrigger:
        if self.slots > 1 and "{i}" not in self.seq:
            raise ValueError(f"with slots > 1, 'seq' must hold '{{i}}' (the slot), got "
                             f"{self.seq!r}")
        return self


class ThresholdTrigger(_Trigger):
    """Raise when the value goes above ``above`` (or below ``below``), clear with hysteresis.

    ``$state`` is ``raised`` or ``cleared``; the clear comes when the value is
    back by ``hysteresis`` (``<= above - hysteresis``, ``>= below + hysteresis``).
    A value already beyond the threshold at first sight raises.
    """

    kind: Literal["threshold"]
    point: Reference
    above: float | None = None
    below: float | None = None
    hysteresis: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _one_side(self) -> ThresholdTrigger:
        if (self.above is None) == (self.below is None):
            raise ValueError("a threshold needs exactly one of 'above' and 'below'")
        return self


class ChangeTrigger(_Trigger):
    """An event whenever a point's value changes (not at first sight unless ``initial``)."""

    kind: Literal["change"]
    point: Reference
    initial: bool = False


Trigger = Annotated[
    CounterTrigger | EdgeTrigger | TrackingTrigger | ThresholdTrigger | ChangeTrigger,
    Field(discriminator="kind"),
]


class TelemetryPoint(Model):
    """A point's value as ``telemetry``: on change (beyond ``deadband``) and/or every ``interval``.

    ``data`` is ``{"point", "value", "quality"}``; the source key
    ``tm:<point>@<time ms>``.
    """

    point: Reference
    on: Literal["change", "interval", "both"] = "change"
    deadband: Annotated[float, Field(ge=0)] = 0.0
    interval: Duration = 0.0

    @model_validator(mode="after")
    def _interval(self) -> TelemetryPoint:
        if self.on in ("interval", "both") and self.interval <= 0:
            raise ValueError(f"on = {self.on!r} needs an 'interval' above 0")
        return self


#: Built-in stages a preset may name (state machines a pure mapping cannot express).
Stage = Literal["conveyor", "amr"]


class MappingConfig(Model):
    """A device's mapping (``[devices.mapping]``), or a preset's."""

    #: A built-in recognizer this mapping stands for (presets only; see docs/mapping.md).
    stage: Stage | None = None
    #: Source fields that identify one happening (sequence numbers, ids): every
    #: source key must hold one of them, a sequence or time special.
    ids: list[Reference] = []
    #: Values a mapping reads as ``$param.NAME`` (the device's ``location``,
    #: ``induct``, ``debounce``, ``no_read_codes`` are params too).
    params: dict[str, Any] = {}
    events: list[EventRule] = []
    triggers: list[Trigger] = []
    telemetry: list[TelemetryPoint] = []

    @model_validator(mode="after")
    def _keys(self) -> MappingConfig:
        problems: list[str] = []
        ids = set(self.ids)
        for name, items in (("events", self.events), ("triggers", self.triggers)):
            for i, rule in enumerate(items):
                kind = getattr(rule, "kind", None)
                allowed = SIGNAL_SPECIALS | TRIGGER_SPECIALS.get(kind or "", frozenset())
                for ref in rule.references():
                    if ref.startswith("$") and not ref.startswith(SPECIAL_PREFIXES) \
                            and ref not in allowed:
                        problems.append(f"{name}[{i}]: unknown special {ref!r}; expected one "
                                        f"of {sorted(allowed)} or '$param.NAME', '$attr.NAME'")
                    if ref.startswith("$data.") and ref[6:] not in rule.data:
                        problems.append(f"{name}[{i}]: {ref!r} names no field of its 'data'")
                for t in rule.key:
                    refs = set(_refs_of(t))
                    # ``$data.X`` stands for what X reads.
                    refs |= {r for d in refs if d.startswith("$data.") and d[6:] in rule.data
                             for r in rule.data[d[6:]].references()}
                    if kind == "counter" and "$count" not in refs:
                        problems.append(f"{name}[{i}].key: {t!r} must hold {{$count}}: two "
                                        "increments read in one poll would share an event id")
                    elif kind == "tracking" and "$tracking_seq" not in refs:
                        problems.append(f"{name}[{i}].key: {t!r} must hold {{$tracking_seq}}: "
                                        "two moves would share an event id")
                    elif not refs & (DISTINGUISHING | ids):
                        problems.append(
                            f"{name}[{i}].key: {t!r} cannot tell two happenings apart: it must "
                            "hold a source field listed in 'ids' (a sequence or id), the source "
                            "time {$source_ms} / {$time_ms}, {$seq} or {$digest}")
        for i, tp in enumerate(self.telemetry):
            if tp.point.startswith("$"):
                problems.append(f"telemetry[{i}].point: a point name, not {tp.point!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def watched(self) -> frozenset[str]:
        """Point names the triggers and telemetry read (``{i}`` expanded)."""
        names: set[str] = set()
        for trig in self.triggers:
            refs = [trig.seq] if isinstance(trig, TrackingTrigger) else [trig.point]
            refs += [r for r in trig.references() if not r.startswith("$")]
            slots = trig.slots if isinstance(trig, TrackingTrigger) else 1
            for r in refs:
                names.update(r.replace("{i}", str(s)) for s in range(slots))
        names.update(t.point for t in self.telemetry)
        for rule in self.events:
            names.update(r for r in rule.on if "*" not in r and "?" not in r)
            # A rule may read other points' current values by name.
            names.update(r for r in rule.references() if not r.startswith("$"))
        return frozenset(names)

    def event_fields(self, point: str) -> frozenset[str] | None:
        """The source fields the rules for ``point`` read (``None``: every field).

        An OPC UA driver selects only these in its event filter (plus ``Time``
        and ``EventType``); a rule reading ``$value`` (the whole event) needs all.
        """
        from fnmatch import fnmatchcase

        names: set[str] = {"Time", "EventType"}
        for rule in self.events:
            if not any(fnmatchcase(point, p) for p in rule.on) or rule.excludes(point):
                continue
            for ref in rule.references():
                if ref == "$value":
                    return None
                if ref.startswith("$"):
                    continue
                names.add(ref)
                names.add(re.split(r"[./]", ref, maxsplit=1)[0])
        return frozenset(names)

    def merged(self, base: MappingConfig) -> MappingConfig:
        """This mapping on top of ``base`` (a preset): own rules first, own params win."""
        return MappingConfig.model_validate({
            "stage": self.stage or base.stage,
            "ids": [*self.ids, *(i for i in base.ids if i not in self.ids)],
            "params": {**base.params, **self.params},
            "events": [*self.events, *base.events],
            "triggers": [*self.triggers, *base.triggers],
            "telemetry": [*self.telemetry, *base.telemetry],
        })


# -- presets ---------------------------------------------------------------------------

#: The presets shipped in ``gateway/mapping/presets/`` (file stem → drivers it suits).
PRESETS: Mapping[str, tuple[str, ...]] = {
    "sorter": ("opcua",),
    "autoid-scan": ("opcua",),
    "scanner-json": ("mqtt",),
    "packml": ("modbus", "opcua"),
    "conveyor": ("modbus",),
    "vda5050": ("vda5050",),
}


def preset_text(name: str) -> str:
    """The TOML text of a shipped preset."""
    return resources.files("gateway.mapping").joinpath(f"presets/{name}.toml").read_text("utf-8")


def load_preset(name: str) -> MappingConfig:
    """A shipped preset as a validated mapping (``ValueError`` naming it when unknown)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return MappingConfig.model_validate(tomllib.loads(preset_text(name)))


def resolve_mapping(driver: str, preset: str | None, mapping: Any) -> MappingConfig | None:
    """The effective mapping of a device, or ``None`` (its role's built-in recognizer).

    Raises ``ValueError`` (preset problems) or ``ValidationError`` (the
    mapping's own keys, located under ``mapping``).
    """
    if preset is None and mapping is None:
        return None
    own = mapping if isinstance(mapping, MappingConfig) or mapping is None else \
        MappingConfig.model_validate(mapping)
    if own is not None and own.stage is not None and not isinstance(mapping, MappingConfig):
        raise ValueError("mapping.stage: built-in stages are named by a preset "
                         "(preset = \"conveyor\" or \"vda5050\"), not by a mapping")
    if preset is None:
        assert own is not None
        return own
    base = load_preset(preset)
    drivers = PRESETS[preset]
    if driver not in drivers:
        raise ValueError(f"preset {preset!r} is for {'/'.join(drivers)} devices, not {driver}")
    if own is None:
        return base
    if base.stage is not None:
        raise ValueError(f"preset {preset!r} is the built-in {base.stage} recognizer; it cannot "
                         "be extended with [devices.mapping] (write a mapping without the preset)")
    return own.merged(base)


__all__ = [
    "PRESETS", "ChangeTrigger", "Condition", "CounterTrigger", "Debounce", "EdgeTrigger",
    "EventRule", "MappingConfig", "Range", "TelemetryPoint", "ThresholdTrigger",
    "TrackingTrigger", "Trigger", "ValidationError", "ValueSpec", "load_preset",
    "resolve_mapping",
]
