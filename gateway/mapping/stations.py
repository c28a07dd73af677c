"""Field maps of pick and pack stations: which vendor message is which, and its fields.

A station (``role = "pick_station"`` / ``"pack_station"``) reads a few kinds
of message: a pick station the *task* shown to the operator and the
operator's *confirm*; a pack station its pack *task*, bench *scans*, *scale*
readings and the *close* confirm. ``[devices.station]`` says, per kind,

- how to tell it: an MQTT ``topic`` filter (``+``/``#``) the message came
  on, and/or ``match`` (field → the value it must have); for a polled device
  (Modbus, OPC UA variables) the ``point`` whose change is the message;
- where its fields are: ``fields`` (canonical name → dotted path in the
  JSON document, or the name of a polled point).

A ``preset`` gives every kind at once (``put-wall-json``, ``pack-bench-json``:
the project's site simulator); the device's own ``messages`` override a
preset's kinds field by field. Everything here is pure data and checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import Field, ValidationError, field_validator

from gateway.core.config import Model, PositiveDuration

__all__ = ["KINDS", "PRESETS", "MessageMap", "StationConfig", "resolve_station",
           "station_problems", "topic_matches"]

#: Per role: each message kind → its canonical fields (required ones first, marked ``!``).
KINDS: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "pick_station": {
        "task": ("task_id!", "location", "sku", "qty", "container", "order", "line",
                 "timestamp"),
        "confirm": ("task_id!", "qty", "short", "qty_adjust", "timestamp", "qty_requested",
                    "location", "sku", "container", "order", "line"),
    },
    "pack_station": {
        "task": ("container!", "order", "carton", "items", "item_sku", "item_qty",
                 "expected_weight_kg", "timestamp"),
        "scan": ("code!", "read_id", "timestamp", "symbology", "qty"),
        "scale": ("weight!", "timestamp"),
        "close": ("seq!", "carton", "container", "order", "items", "item_sku", "item_qty",
                  "weight", "expected_weight_kg", "timestamp"),
    },
}

#: Shipped field maps: the project's site simulator speaks them (docs/stations.md).
PRESETS: Final[Mapping[str, tuple[str, dict[str, Any]]]] = {
    "put-wall-json": ("pick_station", {
        "task": {"topic": "+/+/stations/+/task",
                 "fields": {"task_id": "task_id", "location": "location", "sku": "sku",
                            "qty": "qty", "container": "container", "order": "order",
                            "line": "line", "timestamp": "timestamp"}},
        "confirm": {"topic": "+/+/stations/+/confirm",
                    "fields": {"task_id": "task_id", "qty": "qty", "short": "short",
                               "qty_adjust": "qty_adjust", "timestamp": "timestamp",
                               "qty_requested": "qty_requested", "location": "location",
                               "sku": "sku", "container": "container", "order": "order",
                               "line": "line"}},
    }),
    "pack-bench-json": ("pack_station", {
        "task": {"topic": "+/+/pack/+/task",
                 "fields": {"container": "container", "order": "order", "carton": "carton",
                            "items": "items", "item_sku": "sku", "item_qty": "qty",
                            "expected_weight_kg": "expected_weight_kg",
                            "timestamp": "timestamp"}},
        "scan": {"topic": "+/+/pack/+/scanner/reads",
                 "fields": {"code": "code", "read_id": "read_id", "timestamp": "timestamp",
                            "symbology": "symbology", "qty": "qty"}},
        "scale": {"topic": "+/+/pack/+/scale",
                  "fields": {"weight": "weight_kg", "timestamp": "timestamp"}},
        "close": {"topic": "+/+/pack/+/close",
                  "fields": {"seq": "close_seq", "carton": "carton", "container": "container",
                             "order": "order", "items": "items", "item_sku": "sku",
                             "item_qty": "qty", "weight": "weight_kg",
                             "expected_weight_kg": "expected_weight_kg",
                             "timestamp": "timestamp"}},
    }),
}


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    parts, levels = pattern.split("/"), topic.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)


class MessageMap(Model):
    """How to tell one kind of station message, and where its fields are."""

    topic: str | None = None
    match: dict[str, str | int | bool] = {}
    point: str | None = None
    fields: dict[str, str] = {}

    def matches(self, topic: str | None, point: str, doc: Any) -> bool:
        """Whether a message (MQTT: its topic and document; polled: its point) is this kind."""
        if self.point is not None:
            return point == self.point
        if self.topic is not None and (topic is None or not topic_matches(self.topic, topic)):
            return False
        return all(lookup(doc, path) == want for path, want in self.match.items())

    def merged(self, base: MessageMap) -> MessageMap:
        """This map over a preset's: its own keys win, fields one by one."""
        return MessageMap(topic=self.topic if self.topic is not None else base.topic,
                          match=self.match or base.match,
                          point=self.point if self.point is not None else base.point,
                          fields={**base.fields, **self.fields})


#: A value not in the message (distinct from JSON null).
MISSING: Final = object()


def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted path of a JSON document (``MISSING`` when absent)."""
    if isinstance(doc, dict) and path in doc:
        return doc[path]
    cur = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return MISSING
        cur = cur[part]
    return cur


class StationConfig(Model):
    """``[devices.station]``: a pick or pack station's field map and its limits."""

    preset: str | None = None
    #: ``data.station`` of its events (default: the device id).
    station: str | None = None
    messages: dict[str, MessageMap] = {}
    #: Pack stations: a carton weight further than this from the expected weight is an
    #: ``overweight`` / ``underweight`` exception (the larger of the two tolerances).
    tolerance_kg: Annotated[float, Field(ge=0)] = 0.2
    tolerance_pct: Annotated[float, Field(ge=0, le=100)] = 5.0
    #: Pack stations: scale reading x this = kg (e.g. 0.001 for a scale reporting grams).
    weight_factor: Annotated[float, Field(gt=0)] = 1.0
    #: Pack stations: a pack with nothing closed this long after its last input is abandoned.
    abandon_after: PositiveDuration = 600.0
    #: Open tasks / packs remembered (oldest forgotten first).
    max_open: Annotated[int, Field(ge=1, le=1_000_000)] = 4096

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str | None) -> str | None:
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown station preset {v!r}; expected one of {sorted(PRESETS)}")
        return v


def resolve_station(role: str, station: Any) -> StationConfig:
    """The effective station config of a device (``ValueError`` naming the key path)."""
    cfg = station if isinstance(station, StationConfig) else StationConfig.model_validate(
        station or {})
    kinds = KINDS[role]
    messages: dict[str, MessageMap] = {}
    if cfg.preset is not None:
        preset_role, preset = PRESETS[cfg.preset]
        if preset_role != role:
            raise ValueError(f"station.preset: {cfg.preset!r} is a {preset_role} preset, "
                             f"this device's role is {role!r}")
        messages = {k: MessageMap.model_validate(v) for k, v in preset.items()}
    for kind, own in cfg.messages.items():
        if kind not in kinds:
            raise ValueError(f"station.messages.{kind}: unknown message kind for a {role}; "
                             f"expected one of {', '.join(kinds)}")
        messages[kind] = own.merged(messages[kind]) if kind in messages else own
    for kind, names in kinds.items():
        if kind not in messages:
            raise ValueError(f"station.messages.{kind}: required for a {role} (or set "
                             f"station.preset, one of {sorted(PRESETS)})")
        allowed = [n.rstrip("!") for n in names]
        msg = messages[kind]
        for name in msg.fields:
            if name not in allowed:
                raise ValueError(f"station.messages.{kind}.fields.{name}: unknown field; "
                                 f"expected some of {', '.join(allowed)}")
        for name in names:
            if name.endswith("!") and name[:-1] not in msg.fields:
                raise ValueError(f"station.messages.{kind}.fields.{name[:-1]}: required "
                                 "field is not mapped")
        if msg.topic is None and msg.point is None and not msg.match:
            raise ValueError(f"station.messages.{kind}: needs topic, match or point to tell "
                             "this kind of message")
    return cfg.model_copy(update={"messages": messages})


def station_problems(dev: Any, where: str) -> list[str]:
    """Every problem of a station device's ``[devices.station]``, each naming its key."""
    role: str = getattr(dev, "role", "")
    if role not in KINDS:
        if getattr(dev, "station", None) is not None:
            return [f"{where}.station: only for role 'pick_station' or 'pack_station'"]
        return []
    try:
        cfg = resolve_station(role, dev.station)
    except ValidationError as err:
        out = []
        for e in err.errors(include_url=False):
            key = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key (not part of the station schema)"
            out.append(f"{where}.station.{key}: {msg}")
        return out
    except ValueError as err:
        return [f"{where}.{err}"]
    scan = cfg.messages.get("scan")
    if getattr(dev, "driver", None) == "modbus" and scan is not None \
            and "read_id" not in scan.fields:
        # A polled read has no payload to digest: only its read counter tells two apart.
        return [f"{where}.station.messages.scan.fields.read_id: required on a polled bench "
                "(the scanner's read counter point), or every scan would get one event id"]
    return []

