"""Canonical events: deterministic ids, the exact body encoding, time handling."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.events import (
    EVENT_NAMESPACE,
    EVENT_TYPES,
    SCHEMA,
    Event,
    Priority,
    format_time,
    make_event_id,
    parse_time,
)

SITE, DEVICE, KEY = "DC-EAST-1", "scan-1", "read:r-0001"
#: 2026-11-23T10:15:02.350Z
T_EXAMPLE = datetime(2026, 11, 23, 10, 15, 2, 350000, tzinfo=UTC).timestamp()
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def make(**overrides: object) -> Event:
    kwargs: dict[str, object] = {
        "site": SITE,
        "device": DEVICE,
        "type": "scan",
        "source_key": KEY,
        "occurred_at": T_EXAMPLE,
        "observed_at": T_EXAMPLE + 0.011,
        "data": {"code": "TOTE-000123"},
        "correlation_id": "code:TOTE-000123",
    }
    kwargs.update(overrides)
    return Event.create(**kwargs)  # type: ignore[arg-type]


# -- event ids ---------------------------------------------------------------------------


def test_event_id_is_deterministic() -> None:
    first = make_event_id(SITE, DEVICE, KEY)
    assert make_event_id(SITE, DEVICE, KEY) == first
    # Re-reading the same physical happening later (other times, other data) keeps the id.
    assert make(occurred_at=1.0, observed_at=2.0, data={}).event_id == first
    assert make().event_id == first


def test_event_id_is_pinned_across_releases() -> None:
    # Upstream deduplicates on this id: a change of namespace or key layout
    # would make every redelivery after an upgrade look new.
    assert str(EVENT_NAMESPACE) == "6f1d8a52-6c1e-5e0b-9a57-3f0c2b7d9e41"
    assert make_event_id(SITE, DEVICE, KEY) == "fd962057-3825-558c-8271-151b27202306"


@pytest.mark.parametrize(
    ("site", "device", "key"),
    [
        ("DC-WEST-2", DEVICE, KEY),
        (SITE, "scan-2", KEY),
        (SITE, DEVICE, "read:r-0002"),
        (SITE, DEVICE, "read:r-0001 "),
    ],
    ids=["other-site", "other-device", "other-source-key", "trailing-space-key"],
)
def test_event_id_differs_when_any_part_differs(site: str, device: str, key: str) -> None:
    assert make_event_id(site, device, key) != make_event_id(SITE, DEVICE, KEY)


def test_event_id_is_a_uuid5() -> None:
    text = make_event_id(SITE, DEVICE, KEY)
    parsed = uuid.UUID(text)
    assert parsed.version == 5
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == text  # canonical lower-case hyphenated form


# -- canonical body ----------------------------------------------------------------------


def test_body_is_compact_json_in_canonical_key_order() -> None:
    ev = make(data={"code": "TOTE-000123", "from": "INDUCT-1", "to": "CHUTE-07"})
    doc = json.loads(ev.body)
    assert list(doc) == [
        "event_id",
        "type",
        "schema",
        "site",
        "device",
        "occurred_at",
        "observed_at",
        "correlation_id",
        "priority",
        "data",
    ]
    assert ev.body == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    assert b" " not in ev.body
    assert doc == {
        "event_id": make_event_id(SITE, DEVICE, KEY),
        "type": "scan",
        "schema": "wh.event.v1",
        "site": SITE,
        "device": DEVICE,
        "occurred_at": "2026-11-23T10:15:02.350Z",
        "observed_at": "2026-11-23T10:15:02.361Z",
        "correlation_id": "code:TOTE-000123",
        "priority": "business",
        "data": {"code": "TOTE-000123", "from": "INDUCT-1", "to": "CHUTE-07"},
    }
    assert SCHEMA == "wh.event.v1"
    assert ev.to_dict() == doc
    assert (ev.event_id, ev.type, ev.device) == (doc["event_id"], "scan", DEVICE)


def test_body_keeps_non_ascii_as_utf8_and_null_correlation() -> None:
    ev = make(data={"location": "Lager Süd"}, correlation_id=None)
    assert "Lager Süd".encode() in ev.body
    assert json.loads(ev.body)["correlation_id"] is None


def test_event_data_is_copied() -> None:
    data = {"code": "A"}
    ev = make(data=data)
    data["code"] = "B"
    assert ev.to_dict()["data"] == {"code": "A"}


def test_event_data_may_be_any_mapping() -> None:
    ev = make(data=MappingProxyType({"code": "A", "n": 2}))
    assert ev.to_dict()["data"] == {"code": "A", "n": 2}


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    site=st.text(),
    device=st.text(),
    type_=st.text(),
    key=st.text(),
    correlation=st.none() | st.text(),
    data=st.dictionaries(st.text(), _json_values, max_size=4),
    occurred=st.floats(min_value=0, max_value=4102444800),
)
def test_body_is_exactly_json_dumps_of_the_document(
    site: str,
    device: str,
    type_: str,
    key: str,
    correlation: str | None,
    data: dict[str, object],
    occurred: float,
) -> None:
    ev = Event.create(
        site=site,
        device=device,
        type=type_,
        source_key=key,
        occurred_at=occurred,
        observed_at=occurred,
        data=data,
        correlation_id=correlation,
    )
    doc = {
        "event_id": make_event_id(site, device, key),
        "type": type_,
        "schema": SCHEMA,
        "site": site,
        "device": device,
        "occurred_at": format_time(occurred),
        "observed_at": format_time(occurred),
        "correlation_id": correlation,
        "priority": EVENT_TYPES.get(type_, Priority.TELEMETRY).name.lower(),
        "data": data,
    }
    assert ev.body == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


@given(st.text(), st.text(), st.text())
def test_event_id_is_uuid5_of_site_device_key(site: str, device: str, key: str) -> None:
    expected = str(uuid.uuid5(EVENT_NAMESPACE, f"{site}/{device}/{key}"))
    assert make_event_id(site, device, key) == expected


# -- priority classes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "priority"),
    [
        ("scan", Priority.BUSINESS),
        ("pick", Priority.BUSINESS),
        ("pack", Priority.BUSINESS),
        ("move", Priority.BUSINESS),
        ("exception", Priority.EXCEPTION),
        ("telemetry", Priority.TELEMETRY),
        ("device_status", Priority.TELEMETRY),
        ("not-a-known-type", Priority.TELEMETRY),
    ],
)
def test_priority_class_by_type(type_: str, priority: Priority) -> None:
    ev = make(type=type_)
    assert ev.priority is priority
    assert ev.to_dict()["priority"] == priority.name.lower()


def test_priority_order_and_explicit_override() -> None:
    assert Priority.BUSINESS < Priority.EXCEPTION < Priority.TELEMETRY
    assert {t for t, p in EVENT_TYPES.items() if p is Priority.BUSINESS} == {
        "pick",
        "pack",
        "move",
        "scan",
    }
    ev = make(type="telemetry", priority=Priority.EXCEPTION)
    assert ev.priority is Priority.EXCEPTION
    assert ev.to_dict()["priority"] == "exception"


# -- time --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1.5, "1970-01-01T00:00:01.500Z"),
        (1700000000.123, "2023-11-14T22:13:20.123Z"),
        (T_EXAMPLE, "2026-11-23T10:15:02.350Z"),
    ],
    ids=["epoch", "fraction", "2023", "design-example"],
)
def test_format_time(ts: float, text: str) -> None:
    assert format_time(ts) == text
    assert TIME_RE.match(format_time(ts))


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-23T10:15:02.350Z",
        "2026-11-23T10:15:02.350z",
        "2026-11-23T12:15:02.350+02:00",
        "2026-11-23T05:15:02.350-05:00",
        "2026-11-23T10:15:02.350",
        " 2026-11-23T10:15:02.350Z ",
        1795428902.35,
        1795428902350,
        1795428902350.0,
    ],
    ids=[
        "iso-Z",
        "iso-lower-z",
        "iso-plus-2h",
        "iso-minus-5h",
        "iso-naive-is-utc",
        "iso-padded",
        "epoch-s",
        "epoch-ms-int",
        "epoch-ms-float",
    ],
)
def test_parse_time_accepts(value: object) -> None:
    assert parse_time(value) == pytest.approx(T_EXAMPLE, abs=1e-6)


def test_parse_time_integer_epoch_seconds() -> None:
    assert parse_time(1795428902) == 1795428902.0
    assert isinstance(parse_time(1795428902), float)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("garbage", "'garbage'"),
        ("", "''"),
        ("2026-13-45T10:00:00Z", "'2026-13-45T10:00:00Z'"),
        (True, "True"),
        (False, "False"),
        (None, "NoneType"),
        ([1795428902], "list"),
        ({"ts": 1}, "dict"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (1e20, "1e+20"),
        ("9999-12-31T23:59:59-05:00", "'9999-12-31T23:59:59-05:00'"),
    ],
    ids=[
        "garbage",
        "empty",
        "bad-date",
        "true",
        "false",
        "none",
        "list",
        "dict",
        "nan",
        "inf",
        "beyond-year-9999",
        "iso-beyond-year-9999",
    ],
)
def test_parse_time_rejects_naming_the_value(value: object, named: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_time(value)
    assert named in str(info.value)


def test_every_accepted_time_can_be_formatted() -> None:
    # A timestamp parse_time lets through must never make format_time raise later.
    for value in (0, 1e11, 1e11 + 1, 253402300799, "0001-01-01T00:00:00Z", -1.5):
        assert TIME_RE.match(format_time(parse_time(value)))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("0999-12-31T23:59:59.5Z", "0999-12-31T23:59:59.500Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.000Z"),
    ],
    ids=["year-1", "year-999", "year-9999"],
)
def test_format_time_pads_the_year(value: str, text: str) -> None:
    # e.g. a .NET "no time" value (DateTime.MinValue) must still give valid ISO 8601.
    assert format_time(parse_time(value)) == text
    assert format_time(parse_time(text)) == text


# 1900..2100: every time a device can plausibly report. Beyond about 2106 a
# float no longer resolves a microsecond, and truncation may then lose 1 ms.
_MIN_TS = datetime(1900, 1, 1, tzinfo=UTC).timestamp()
_MAX_TS = datetime(2100, 1, 1, tzinfo=UTC).timestamp()


@given(
    st.floats(
        min_value=datetime(1, 1, 1, tzinfo=UTC).timestamp(),
        max_value=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp(),
    )
)
def test_format_time_matches_datetime(t: float) -> None:
    # The reference: datetime's own rounding to the microsecond, truncated to ms.
    reference = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
    assert format_time(t) == reference.removesuffix("+00:00") + "Z"


@given(st.floats(min_value=_MIN_TS, max_value=_MAX_TS, allow_nan=False))
def test_format_parse_round_trip(t: float) -> None:
    text = format_time(t)
    assert TIME_RE.match(text)
    back = parse_time(text)
    assert format_time(back) == text
    # The text keeps milliseconds: at most 1 ms below t (plus float slack).
    assert -1e-5 <= t - back < 1e-3 + 1e-5


@given(st.integers(min_value=946684800_000, max_value=4102444800_000))
def test_milliseconds_survive_in_this_era(ms: int) -> None:
    # 2000-2100: an integer number of milliseconds round-trips exactly.
    text = format_time(ms / 1000)
    assert int(text[20:23]) == ms % 1000
    assert round(parse_time(text) * 1000) == ms
    assert parse_time(ms) == pytest.approx(ms / 1000)
