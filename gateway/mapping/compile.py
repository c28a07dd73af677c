"""Mapping config → small closures the engine calls per signal (compiled once per device).

Every reference, value spec and template is turned into a function of one
``Ctx`` (the signal being mapped, the device's current point values, the
mapping's params, the event's time and data so far), so the per-signal path
does no parsing, no dict of options, no isinstance chains over config.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from gateway.core.events import Signal, format_time, parse_time
from gateway.mapping.config import PLACEHOLDER, Condition, ValueSpec

#: A reference's value when the source does not have it.
MISSING: Final[Any] = object()


class Reject(Exception):
    """A signal the mapping cannot make an event of; ``kind`` names the dead letter's reason."""

    def __init__(self, kind: str, detail: str, field: str | None = None,
                 value: Any = MISSING) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.field = field
        self.value = value


class Ctx:
    """What references read while one event is made."""

    __slots__ = ("data", "doc", "extra", "occurred", "params", "sig", "source", "values")

    def __init__(self, sig: Signal, doc: Mapping[str, Any] | None, values: Mapping[str, Any],
                 params: Mapping[str, Any], occurred: float, source: float | None,
                 extra: Mapping[str, Any] | None = None) -> None:
        self.sig = sig
        self.doc = doc
        self.values = values
        self.params = params
        self.occurred = occurred
        self.source = source
        self.extra = _NO_EXTRA if extra is None else extra
        self.data: dict[str, Any] = {}


_NO_EXTRA: Mapping[str, Any] = {}


Getter = Callable[[Ctx], Any]
Value = Callable[[Ctx], Any]


def _walk(doc: Any, parts: Sequence[str]) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict):
            cur = cur.get(part, MISSING)
            if cur is MISSING:
                return MISSING
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return MISSING
    return cur


#: Getters that already return MISSING for null (``first_present`` need not wrap them).
_NULL_IS_MISSING: weakref.WeakSet[Getter] = weakref.WeakSet()


def _field_getter(ref: str) -> Getter:
    parts = re.split(r"[./]", ref) if ("." in ref or "/" in ref) else None

    # Returns MISSING for null too (the callers treat both alike).
    def get(ctx: Ctx) -> Any:
        doc = ctx.doc
        if doc is not None:
            v = doc.get(ref)
            if v is not None:
                return v
            if parts is not None:
                v = _walk(doc, parts)
                if v is not MISSING and v is not None:
                    return v
        v = ctx.values.get(ref)
        return MISSING if v is None else v

    _NULL_IS_MISSING.add(get)
    return get


def _ms(ts: float) -> int:
    return round(ts * 1000)


_SPECIALS: Mapping[str, Getter] = {
    "$device": lambda c: c.sig.device,
    "$point": lambda c: c.sig.point,
    "$value": lambda c: c.sig.value,
    "$quality": lambda c: c.sig.quality,
    "$seq": lambda c: c.sig.source_seq,
    "$topic": lambda c: c.sig.attrs.get("topic"),
    "$digest": lambda c: c.sig.attrs.get("digest"),
    "$time_ms": lambda c: _ms(c.occurred),
    "$source_ms": lambda c: MISSING if c.source is None else _ms(c.source),
    "$receive_ms": lambda c: _ms(c.sig.receive_time),
    "$time": lambda c: format_time(c.occurred),
}


def getter(ref: str) -> Getter:
    """The function reading one reference (``MISSING`` when absent)."""
    special = _SPECIALS.get(ref)
    if special is not None:
        return special
    if ref.startswith("$param."):
        name = ref[7:]
        return lambda c: c.params.get(name, MISSING)
    if ref.startswith("$attr."):
        name = ref[6:]
        return lambda c: c.sig.attrs.get(name, MISSING)
    if ref.startswith("$data."):
        name = ref[6:]
        return lambda c: c.data.get(name, MISSING)
    if ref.startswith("$"):
        return lambda c: c.extra.get(ref, MISSING)
    return _field_getter(ref)


def first_present(getters: Sequence[Getter], empty_is_missing: bool = False) -> Getter:
    """The first of ``getters`` that has a value (not absent, not null)."""
    if len(getters) == 1 and not empty_is_missing:
        (g,) = getters
        if g in _NULL_IS_MISSING:
            return g

        def one(ctx: Ctx) -> Any:
            v = g(ctx)
            return MISSING if v is None else v

        return one

    def first(ctx: Ctx) -> Any:
        for g in getters:
            v = g(ctx)
            if v is MISSING or v is None or (empty_is_missing and v == ""):
                continue
            return v
        return MISSING

    return first


# -- typing ---------------------------------------------------------------------------

_INT_TEXT = re.compile(r"^\s*[-+]?\d+\s*$")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


def _bad(label: str, want: str, v: Any) -> Reject:
    return Reject("bad_field", f"field {label!r} must be {want}, got {_short(v)}", label, v)


def _to_string(v: Any, label: str) -> Any:
    if type(v) is str:
        try:
            v.encode()
        except UnicodeEncodeError:
            raise Reject("bad_field", f"field {label!r} is not valid Unicode text "
                         "(lone surrogate escape)", label, v) from None
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise _bad(label, "text", v)


def _to_text(v: Any, label: str) -> Any:
    if type(v) is str:
        return _to_string(v, label)
    raise _bad(label, "text", v)


def _to_int(v: Any, label: str) -> Any:
    if isinstance(v, bool):
        raise _bad(label, "an integer", v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    if isinstance(v, str) and _INT_TEXT.match(v) and len(v) < 40:
        return int(v)
    raise _bad(label, "an integer", v)


def _to_float(v: Any, label: str) -> Any:
    if isinstance(v, bool):
        raise _bad(label, "a number", v)
    if isinstance(v, int | float):
        f = float(v)
    elif isinstance(v, str) and len(v) < 40:
        try:
            f = float(v)
        except ValueError:
            raise _bad(label, "a number", v) from None
    else:
        raise _bad(label, "a number", v)
    if not math.isfinite(f):
        raise _bad(label, "a finite number", v)
    return f


def _to_bool(v: Any, label: str) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0"):
        return v.lower() in ("true", "1")
    raise _bad(label, "a boolean", v)


def _to_time(v: Any, label: str) -> Any:
    try:
        return format_time(parse_time(v))
    except ValueError as err:
        raise Reject("bad_timestamp", f"field {label!r}: {err}", label, v) from None


_COERCE: Mapping[str, Callable[[Any, str], Any] | None] = {
    "raw": None, "string": _to_string, "text": _to_text, "int": _to_int, "float": _to_float,
    "bool": _to_bool, "time": _to_time,
}


def map_key(v: Any) -> str | None:
    """How a source value is looked up in a value map (TOML keys are text)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return None


def value_fn(spec: ValueSpec, name: str) -> Value:
    """Compile one value spec (``name`` labels its errors when it reads a constant)."""
    label = spec.field[0] if spec.field else name
    source: Getter | None = None
    if spec.field is not None:
        source = first_present([getter(r) for r in spec.field], spec.empty_is_missing)
    const = spec.const
    has_default, default = spec.has_default, spec.default
    required = spec.required
    table = spec.map
    ranges = [(r.min, r.max, r.value) for r in spec.ranges]
    mapped = table is not None or bool(ranges)
    coerce = _COERCE[spec.type]
    lenient = spec.lenient

    def lookup(v: Any) -> Any:
        if table is not None:
            k = map_key(v)
            if k is not None and k in table:
                return table[k]
        if ranges and isinstance(v, int | float) and not isinstance(v, bool):
            for lo, hi, out in ranges:
                if (lo is None or v >= lo) and (hi is None or v < hi):
                    return out
        return MISSING

    def value(ctx: Ctx) -> Any:
        v = const if source is None else source(ctx)
        if v is MISSING or v is None:
            if has_default:
                return default
            if required:
                raise Reject("missing_field", f"field {label!r} is missing or empty", label)
            return None
        if mapped:
            m = lookup(v)
            if m is MISSING:
                if has_default:
                    return default
                raise Reject("unmapped_value", f"field {label!r} value {_short(v)} is not "
                             "mapped", label, v)
            v = m
        if coerce is not None:
            if lenient:
                try:
                    return coerce(v, label)
                except Reject:
                    return None
            return coerce(v, label)
        return v

    if source is not None and not mapped and coerce is not None and not has_default \
            and not required and not lenient:
        # A typed field, nothing else to decide.
        def typed(ctx: Ctx) -> Any:
            v = source(ctx)
            if v is MISSING:
                return None
            return coerce(v, label)

        return typed
    if source is not None and not mapped and coerce is None and not has_default \
            and not required:
        # The common pass-through field: no checks to run.
        def plain(ctx: Ctx) -> Any:
            v = source(ctx)
            return None if v is MISSING else v

        return plain
    return value


# -- templates and conditions ---------------------------------------------------------

Template = Callable[[Ctx], "str | None"]


def template_fn(text: str) -> Template:
    """Compile one template: the rendered text, or None when a placeholder is missing."""
    pieces = PLACEHOLDER.split(text)  # literal, ref, literal, ref, ..., literal
    getters = [getter(p.strip()) for p in pieces[1::2]]
    fmt = "{}".join(pieces[0::2])  # no braces left in the literals (checked at load)

    def render(ctx: Ctx) -> str | None:
        vals = [g(ctx) for g in getters]
        for v in vals:
            if v is MISSING or v is None:
                return None
        return fmt.format(*vals)

    return render


def templates_fn(texts: Sequence[str]) -> Template:
    """The first of several templates that renders."""
    fns = [template_fn(t) for t in texts]
    if len(fns) == 1:
        return fns[0]

    def first(ctx: Ctx) -> str | None:
        for f in fns:
            out = f(ctx)
            if out is not None:
                return out
        return None

    return first


def _members(items: list[Any]) -> tuple[frozenset[Any], frozenset[str]]:
    raw = frozenset(i for i in items if isinstance(i, str | int | float | bool))
    return raw, frozenset(str(i) for i in items)


def condition_fn(cond: Condition, params: Mapping[str, Any]) -> Callable[[Ctx], bool]:
    """Compile one ``when`` condition (a ``$param.`` list is read once, here)."""
    source = first_present([getter(r) for r in cond.field])
    default = cond.default

    def resolve(v: list[Any] | str | None) -> tuple[frozenset[Any], frozenset[str]] | None:
        if v is None:
            return None
        if isinstance(v, str):
            items = params.get(v[7:])
            return _members(list(items) if isinstance(items, list | tuple) else [items])
        return _members(v)

    inside, outside, present = resolve(cond.in_), resolve(cond.not_in), cond.present

    def member(v: Any, sets: tuple[frozenset[Any], frozenset[str]]) -> bool:
        raw, text = sets
        if isinstance(v, str | int | float | bool) and v in raw:
            return True
        return (v if type(v) is str else str(v)) in text

    def test(ctx: Ctx) -> bool:
        v = source(ctx)
        if present is not None and (v is not MISSING) != present:
            return False
        if v is MISSING:
            if default is None:
                return inside is None  # a missing value is in no list
            v = default
        if inside is not None and not member(v, inside):
            return False
        return not (outside is not None and member(v, outside))

    return test
