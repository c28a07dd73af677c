"""Modbus register maps: decoding (all four 32-bit layouts), request planning, config errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.config import ModbusDevice
from drivers.modbus.registers import (
    BadValue,
    PointSpec,
    ReadBlock,
    Span,
    encode,
    exception_text,
    plan_reads,
    spans_of,
)
from gateway.config import ConfigError, parse_config
from simulators.conveyor_plc import gateway_device_toml


def decode_one(p: PointSpec, regs: list[int]) -> Any:
    return ReadBlock(p.table, p.address, p.width, [p]).decode(regs)[0]


def reg(name: str, type_: str, order: str = "ABCD", **kw: Any) -> PointSpec:
    return PointSpec(name, "holding", 0, type_, order, **kw)  # type: ignore[arg-type]


# value A B C D = 0x12 0x34 0x56 0x78; each layout puts the bytes on the wire differently
DECODE_TABLE: list[tuple[str, str, list[int], Any]] = [
    ("u32", "ABCD", [0x1234, 0x5678], 0x12345678),
    ("u32", "CDAB", [0x5678, 0x1234], 0x12345678),
    ("u32", "BADC", [0x3412, 0x7856], 0x12345678),
    ("u32", "DCBA", [0x7856, 0x3412], 0x12345678),
    ("u32", "ABCD", [0xFFFF, 0xFFFF], 0xFFFFFFFF),
    ("i32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("i32", "CDAB", [0xFFFE, 0xFFFF], -2),
    ("i32", "BADC", [0xFFFF, 0xFEFF], -2),
    ("i32", "DCBA", [0xFEFF, 0xFFFF], -2),
    ("i32", "ABCD", [0x8000, 0x0000], -(2**31)),
    ("f32", "ABCD", [0x3FC0, 0x0000], 1.5),
    ("f32", "CDAB", [0x0000, 0x3FC0], 1.5),
    ("f32", "BADC", [0xC03F, 0x0000], 1.5),
    ("f32", "DCBA", [0x0000, 0xC03F], 1.5),
    ("f32", "ABCD", [0xC2F6, 0xE979], -123.456),
    ("u16", "ABCD", [0x1234], 0x1234),
    ("u16", "CDAB", [0x1234], 0x1234),
    ("u16", "BADC", [0x1234], 0x3412),
    ("u16", "DCBA", [0x1234], 0x3412),
    ("i16", "ABCD", [0xFFFF], -1),
    ("i16", "ABCD", [0x8000], -32768),
    ("i16", "BADC", [0x00FF], -256),
]


@pytest.mark.parametrize(("type_", "order", "regs", "want"), DECODE_TABLE)
def test_decode_layouts(type_: str, order: str, regs: list[int], want: Any) -> None:
    got = decode_one(reg("v", type_, order), regs)
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6)
    else:
        assert got == want


@pytest.mark.parametrize(("type_", "order", "regs", "want"), DECODE_TABLE)
def test_encode_is_the_inverse(type_: str, order: str, regs: list[int], want: Any) -> None:
    assert encode(reg("v", type_, order), want) == regs


@pytest.mark.parametrize(("type_", "regs", "scale", "offset", "want"), [
    ("u16", [1500], 0.001, 0.0, 1.5),
    ("i16", [0xFFF6], 0.1, 20.0, 19.0),
    ("u32", [0x0001, 0x0000], 1.0, -65536.0, 0.0),
    ("f32", [0x3FC0, 0x0000], 2.0, 1.0, 4.0),
])
def test_scale_and_offset(type_: str, regs: list[int], scale: float, offset: float,
                          want: float) -> None:
    assert decode_one(reg("v", type_, scale=scale, offset=offset), regs) == pytest.approx(want)


@pytest.mark.parametrize(("order", "regs"), [
    ("ABCD", [0x544F, 0x5445, 0x2D30, 0x3100]),
    ("CDAB", [0x544F, 0x5445, 0x2D30, 0x3100]),
    ("BADC", [0x4F54, 0x4554, 0x302D, 0x0031]),
    ("DCBA", [0x4F54, 0x4554, 0x302D, 0x0031]),
])
def test_strings_strip_padding(order: str, regs: list[int]) -> None:
    assert decode_one(reg("tote", "string", order, length=8), regs) == "TOTE-01"
    assert decode_one(reg("tote", "string", order, length=7), regs) == "TOTE-01"


@pytest.mark.parametrize(("type_", "regs", "kind"), [
    ("f32", [0x7FC0, 0x0000], "not_finite"),
    ("f32", [0x7F80, 0x0000], "not_finite"),
    ("f32", [0xFF80, 0x0000], "not_finite"),
    ("string", [0x41FF], "bad_text"),
    ("string", [0x0741], "bad_text"),
])
def test_values_that_cannot_be_signals(type_: str, regs: list[int], kind: str) -> None:
    got = decode_one(reg("v", type_, length=2 if type_ == "string" else 0), regs)
    assert isinstance(got, BadValue)
    assert got.kind == kind
    assert got.raw == b"".join(r.to_bytes(2, "big") for r in regs)
    # The same bad registers compare equal: an unchanged bad reading is reported once.
    assert got == decode_one(reg("v", type_, length=2 if type_ == "string" else 0), regs)


def test_block_of_mixed_layouts_gaps_and_scales() -> None:
    points = [
        PointSpec("a", "input", 10, "u32", "ABCD"),
        PointSpec("b", "input", 12, "u32", "CDAB"),
        PointSpec("c", "input", 14, "f32", "BADC"),
        PointSpec("d", "input", 17, "i32", "DCBA"),  # 16 is an unmapped gap
        PointSpec("e", "input", 19, "u16", "ABCD", scale=0.5),
        PointSpec("f", "input", 20, "f32", "ABCD"),
    ]
    block = ReadBlock("input", 10, 12, points)
    regs = [0x1234, 0x5678, 0x5678, 0x1234, 0xC03F, 0x0000, 0xDEAD,
            0xFEFF, 0xFFFF, 0x0007, 0x7FC0, 0x0000]
    values = block.decode(regs)
    assert values[:5] == [0x12345678, 0x12345678, 1.5, -2, 3.5]
    assert isinstance(values[5], BadValue)
    with pytest.raises(ValueError, match="expected 12 registers, got 11"):
        block.decode(regs[:11])


def test_bits() -> None:
    points = [PointSpec(f"b{a}", "coil", a, "bool") for a in (10, 12, 15)]
    block = ReadBlock("coil", 10, 6, points)
    assert block.decode([True, False, False, False, False, True, False, False]) == \
        [True, False, True]
    one = ReadBlock("discrete_input", 3, 1, [PointSpec("x", "discrete_input", 3, "bool")])
    assert one.decode([True] + [False] * 7) == [True]


def u16s(table: str, *addresses: int) -> list[Span]:
    return spans_of(PointSpec(f"p{a}", table, a, "u16") for a in addresses)  # type: ignore[arg-type]


def shape(blocks: list[ReadBlock]) -> list[tuple[str, int, int]]:
    return [(b.table, b.address, b.count) for b in blocks]


@pytest.mark.parametrize(("spans", "kw", "want"), [
    (u16s("input", 0, 1, 2, 3), {}, [("input", 0, 4)]),
    (u16s("input", 0, 5, 14), {"max_gap": 8}, [("input", 0, 15)]),
    (u16s("input", 0, 5, 14), {"max_gap": 3}, [("input", 0, 1), ("input", 5, 1),
                                               ("input", 14, 1)]),
    (u16s("input", 0, 10), {"max_gap": 9}, [("input", 0, 11)]),
    (u16s("input", 0, 10), {"max_gap": 8}, [("input", 0, 1), ("input", 10, 1)]),
    (u16s("input", *range(130)), {}, [("input", 0, 125), ("input", 125, 5)]),
    (u16s("input", *range(20)), {"max_registers": 8},
     [("input", 0, 8), ("input", 8, 8), ("input", 16, 4)]),
    (u16s("holding", 3) + u16s("input", 3) + u16s("holding", 1), {},
     [("holding", 1, 3), ("input", 3, 1)]),
    # A 32-bit value is never split across two requests.
    (u16s("input", *range(124)) + spans_of([PointSpec("w", "input", 124, "u32")]), {},
     [("input", 0, 124), ("input", 124, 2)]),
    (spans_of(PointSpec(f"c{a}", "coil", a, "bool") for a in range(2001)), {},
     [("coil", 0, 2000), ("coil", 2000, 1)]),
    (spans_of(PointSpec(f"c{a}", "coil", a, "bool") for a in (0, 60, 200)), {},
     [("coil", 0, 61), ("coil", 200, 1)]),
    # The tracking ring is one indivisible span.
    ([*u16s("input", 0, 1), Span("input", 2, 120, ())], {}, [("input", 0, 122)]),
    ([*u16s("input", 0, 5), Span("input", 6, 120, ())], {},
     [("input", 0, 6), ("input", 6, 120)]),
])
def test_plan_reads(spans: list[Span], kw: dict[str, int],
                    want: list[tuple[str, int, int]]) -> None:
    assert shape(plan_reads(spans, **kw)) == want


def test_plan_rejects_a_span_larger_than_a_request() -> None:
    with pytest.raises(ValueError, match="larger than one read request"):
        plan_reads([Span("input", 0, 126, ())])


def test_the_simulator_map_needs_five_requests() -> None:
    dev = device(tomllib.loads(gateway_device_toml("c", 5020))["devices"][0])
    assert shape(plan_reads(dev.spans(), max_gap=dev.max_gap)) == [
        ("coil", 0, 6), ("discrete_input", 0, 17), ("holding", 0, 2), ("input", 0, 22),
        ("input", 100, 120)]


@pytest.mark.parametrize(("code", "text"), [
    (1, "0x01 ILLEGAL FUNCTION"), (2, "0x02 ILLEGAL DATA ADDRESS"),
    (4, "0x04 SERVER DEVICE FAILURE"), (6, "0x06 SERVER DEVICE BUSY"),
    (10, "0x0A GATEWAY PATH UNAVAILABLE"),
    (11, "0x0B GATEWAY TARGET DEVICE FAILED TO RESPOND"), (9, "0x09 UNKNOWN EXCEPTION CODE"),
])
def test_exception_names(code: int, text: str) -> None:
    assert exception_text(code) == text


# -- config validation -----------------------------------------------------------------

def device(raw: dict[str, Any]) -> ModbusDevice:
    return ModbusDevice.model_validate(raw)


def base(**kw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": "conv-1", "driver": "modbus", "points": [
        {"name": "boot", "table": "input", "address": 0, "role": "boot_count"},
        {"name": "good", "table": "input", "address": 2, "type": "u32", "role": "counter"},
    ]}
    raw.update(kw)
    return raw


def problems(raw_device: dict[str, Any]) -> str:
    doc = {"site": {"id": "S"}, "store": {"path": "b.db"}, "devices": [raw_device]}
    with pytest.raises(ConfigError) as err:
        parse_config(doc, Path("/etc/gw/site.toml"))
    return str(err.value)


def test_simulator_map_is_valid_and_complete() -> None:
    dev = device(tomllib.loads(gateway_device_toml("c", 5020, extra={
        "zones": {"1": "INDUCT-1"}}))["devices"][0])
    assert dev.zones == {"1": "INDUCT-1"}
    roles = dev.role_points()
    assert roles["counter"] == ["good_count", "noread_count"]
    assert roles["fault_active"] == ["jam"]
    assert dev.tracking is not None and dev.tracking.slots == 12
    assert dev.counter_moduli() == {"good_count": 2**32, "noread_count": 2**32}


@pytest.mark.parametrize(("change", "expected"), [
    ({"points": [{"name": "x", "table": "coil", "address": 0, "type": "u32"}]},
     "devices[0].points[0]: Value error, type 'u32' needs registers, but table 'coil'"),
    ({"points": [{"name": "x", "table": "input", "address": 0, "type": "float"}]},
     "devices[0].points[0].type: Input should be 'bool', 'u16', 'i16', 'u32', 'i32', 'f32'"),
    ({"points": [{"name": "x", "table": "input", "address": 0, "type": "bool"}]},
     "type 'bool' is for tables 'coil' and 'discrete_input'"),
    ({"points": [{"name": "x", "table": "input", "address": 65535, "type": "u32"}]},
     "address 65535 + 2 runs past the end of the table"),
    ({"points": [{"name": "x", "table": "input", "address": 70000}]},
     "devices[0].points[0].address: Input should be less than or equal to 65535"),
    ({"points": [{"name": "x", "table": "input", "address": 0, "type": "string"}]},
     "type 'string' needs 'length'"),
    ({"points": [{"name": "x", "table": "tables", "address": 0}]},
     "devices[0].points[0].table: Input should be 'coil', 'discrete_input', 'holding'"),
    ({"points": [{"name": "x", "table": "input", "address": 0, "order": "BACD"}]},
     "devices[0].points[0].order: Input should be 'ABCD', 'CDAB', 'BADC' or 'DCBA'"),
    ({"points": [{"name": "x", "table": "input", "address": 0, "bits": 3}]},
     "devices[0].points[0].bits: unknown key"),
    ({"points": []}, "the register map is empty"),
])
def test_point_errors_are_named(change: dict[str, Any], expected: str) -> None:
    text = problems(base(**change))
    assert "/etc/gw/site.toml: " in text
    assert expected.replace("Value error, ", "") in text.replace("Value error, ", "")


@pytest.mark.parametrize(("points", "tracking", "expected"), [
    ([{"name": "a", "table": "input", "address": 0, "type": "u32"},
      {"name": "b", "table": "input", "address": 1}], None,
     "'a' (input 0..1) overlaps 'b' (input address 1)"),
    ([{"name": "a", "table": "input", "address": 0},
      {"name": "a", "table": "input", "address": 1}], None, "duplicate point name(s): a"),
    ([{"name": "a", "table": "input", "address": 0, "role": "counter"}], None,
     "'counter' need a point with role 'boot_count'"),
    ([{"name": "b", "table": "input", "address": 0, "role": "boot_count"},
      {"name": "j", "table": "coil", "address": 0, "type": "bool", "role": "fault_active"}],
     None, "fault roles need a point with role 'fault_count'"),
    ([{"name": "b", "table": "input", "address": 0, "role": "boot_count"},
      {"name": "n", "table": "input", "address": 1, "role": "fault_count"}],
     None, "role 'fault_count' needs a point with role 'fault_active' or 'fault_code'"),
    ([{"name": "b", "table": "input", "address": 0, "role": "boot_count"},
      {"name": "c", "table": "input", "address": 1, "role": "counter", "type": "i16"}],
     None, "role 'counter' needs an unsigned counter type 'u16' or 'u32', got 'i16'"),
    ([{"name": "h1", "table": "input", "address": 0, "role": "heartbeat"},
      {"name": "h2", "table": "input", "address": 1, "role": "heartbeat"}],
     None, "role 'heartbeat' may be mapped once, found 2 points"),
    ([{"name": "s", "table": "input", "address": 0, "role": "state_count"},
      {"name": "b", "table": "input", "address": 1, "role": "boot_count"}],
     None, "role 'state_count' needs a point with role 'state'"),
    ([{"name": "b", "table": "input", "address": 0, "role": "boot_count"},
      {"name": "x", "table": "input", "address": 105}],
     {"address": 100, "slots": 10, "slot_size": 10, "from_offset": 8, "to_offset": 9},
     "'tracking ring' (input 100..199) overlaps 'x'"),
    ([{"name": "b", "table": "input", "address": 0, "role": "boot_count"}],
     {"address": 100, "slots": 13, "slot_size": 10, "from_offset": 8, "to_offset": 9},
     "(13 slots x 10 = 130 registers) must fit one read request"),
    ([{"name": "b", "table": "input", "address": 0, "role": "boot_count"}],
     {"address": 100, "slots": 4, "slot_size": 8, "from_offset": 8, "to_offset": 9},
     "tracking field 'from' (offset 8, 1 registers) does not fit in slot_size 8"),
    ([{"name": "b", "table": "input", "address": 0, "role": "boot_count"}],
     {"address": 100, "slots": 4, "slot_size": 10, "from_offset": 7, "to_offset": 9},
     "tracking fields 'tote' and 'from' overlap"),
    ([{"name": "x", "table": "input", "address": 0}],
     {"address": 100, "slots": 4, "slot_size": 10, "from_offset": 8, "to_offset": 9},
     "'tracking' need a point with role 'boot_count'"),
])
def test_map_errors_are_named(points: list[dict[str, Any]], tracking: dict[str, Any] | None,
                              expected: str) -> None:
    raw = base(points=points)
    if tracking is not None:
        raw["tracking"] = tracking
    assert expected in problems(raw)


def test_points_take_the_device_order_unless_they_name_one() -> None:
    raw = base(order="CDAB")
    raw["points"].append({"name": "t", "table": "input", "address": 4, "type": "f32",
                          "order": "DCBA"})
    specs = {p.name: p for p in device(raw).point_specs()}
    assert (specs["good"].order, specs["good"].scale, specs["good"].width) == ("CDAB", 1.0, 2)
    assert specs["t"].order == "DCBA"


def test_the_documented_example_config_is_valid() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "conveyor-modbus.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block is not None
    doc = tomllib.loads('[site]\nid = "S"\n[store]\npath = "b.db"\n' + block.group(1))
    dev = parse_config(doc, Path("/etc/gw/site.toml")).devices[0]
    assert isinstance(dev, ModbusDevice)
    assert dev.zones["1"] == "INDUCT-1" and dev.tracking is not None
    assert len(plan_reads(dev.spans(), max_gap=dev.max_gap)) == 5
