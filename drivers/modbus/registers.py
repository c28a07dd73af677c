"""Modbus register maps, pure: point types, decoding and read planning.

Nothing here does I/O. A *point* is one named value at a fixed place in one
of the four Modbus tables; ``plan_reads`` groups the points of a device into
as few read requests as the protocol limits and the configured gap allow;
``ReadBlock.decode`` turns one response into the values of its points;
``split_at_gaps`` re-plans one bridged request for a device that refuses reads
over unmapped addresses.

32-bit layouts are named by where the value's big-endian bytes ``A B C D``
(``A`` most significant) land on the wire, register by register:

========  ==============  =========================================
layout    registers       meaning
========  ==============  =========================================
ABCD      ``AB`` ``CD``   big-endian (the Modbus convention)
CDAB      ``CD`` ``AB``   word-swapped (low word first)
BADC      ``BA`` ``DC``   byte-swapped inside each register
DCBA      ``DC`` ``BA``   little-endian
========  ==============  =========================================

16-bit values follow the byte order only (``BADC``/``DCBA`` swap the two
bytes of the register); strings are read register by register, high byte
first, or low byte first for ``BADC``/``DCBA``.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Table = Literal["coil", "discrete_input", "holding", "input"]
ValueType = Literal["bool", "u16", "i16", "u32", "i32", "f32", "string"]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]

TABLES: Final[tuple[Table, ...]] = ("coil", "discrete_input", "holding", "input")
BIT_TABLES: Final = frozenset({"coil", "discrete_input"})
VALUE_TYPES: Final[tuple[ValueType, ...]] = ("bool", "u16", "i16", "u32", "i32", "f32", "string")
ORDERS: Final[tuple[Order, ...]] = ("ABCD", "CDAB", "BADC", "DCBA")

#: Protocol limits of one read request (Modbus application protocol v1.1b3).
MAX_READ_REGISTERS: Final = 125
MAX_READ_BITS: Final = 2000

#: Registers each fixed-width type occupies.
TYPE_REGISTERS: Final[dict[str, int]] = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}
_STRUCT_CODE: Final = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f"}

#: Exception codes of the Modbus application protocol, as a device error names them.
EXCEPTION_NAMES: Final[dict[int, str]] = {
    0x01: "ILLEGAL FUNCTION",
    0x02: "ILLEGAL DATA ADDRESS",
    0x03: "ILLEGAL DATA VALUE",
    0x04: "SERVER DEVICE FAILURE",
    0x05: "ACKNOWLEDGE",
    0x06: "SERVER DEVICE BUSY",
    0x07: "NEGATIVE ACKNOWLEDGE",
    0x08: "MEMORY PARITY ERROR",
    0x0A: "GATEWAY PATH UNAVAILABLE",
    0x0B: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}


def exception_text(code: int) -> str:
    """``0x02 ILLEGAL DATA ADDRESS`` for code 2 (unknown codes are named as such)."""
    return f"0x{code:02X} {EXCEPTION_NAMES.get(code, 'UNKNOWN EXCEPTION CODE')}"


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One named value in a device's register map (validated by the config model)."""

    name: str
    table: Table
    address: int
    type: ValueType
    order: Order = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    #: Characters of a ``string`` point (it occupies ``ceil(length / 2)`` registers).
    length: int = 0

    @property
    def width(self) -> int:
        """Registers (or bits, in a bit table) the point occupies."""
        if self.type == "bool":
            return 1
        if self.type == "string":
            return (self.length + 1) // 2
        return TYPE_REGISTERS[self.type]

    @property
    def end(self) -> int:
        """One past the last address the point occupies."""
        return self.address + self.width


@dataclass(frozen=True, slots=True)
class BadValue:
    """A point whose registers cannot become a signal value (NaN, bad text...).

    Equal when the raw registers are equal, so an unchanged bad reading is
    recognised as unchanged and reported once.
    """

    kind: str
    detail: str
    raw: bytes = field(compare=True)


@dataclass(frozen=True, slots=True)
class Span:
    """Addresses that must be read in one request (one point, or a tracking ring)."""

    table: Table
    address: int
    count: int
    points: tuple[PointSpec, ...]

    @property
    def end(self) -> int:
        """One past the last address of the span."""
        return self.address + self.count


def spans_of(points: Iterable[PointSpec]) -> list[Span]:
    """One span per point."""
    return [Span(p.table, p.address, p.width, (p,)) for p in points]


def plan_reads(spans: Iterable[Span], *, max_gap: int = 8, max_bit_gap: int = 64,
               max_registers: int = MAX_READ_REGISTERS,
               max_bits: int = MAX_READ_BITS) -> list[ReadBlock]:
    """Group spans into the fewest read requests.

    Per table, spans are taken in address order and a request is extended
    while the next span starts at most ``max_gap`` registers (``max_bit_gap``
    bits) after the current end and the request stays within the size limit.
    Left-to-right greedy extension is optimal for this covering problem. A
    span is never split (a tracking ring must be read atomically).
    """
    by_table: dict[Table, list[Span]] = {}
    for span in spans:
        by_table.setdefault(span.table, []).append(span)
    blocks: list[ReadBlock] = []
    for table in TABLES:
        items = sorted(by_table.get(table, ()), key=lambda s: (s.address, s.count))
        bits = table in BIT_TABLES
        gap = max_bit_gap if bits else max_gap
        limit = max_bits if bits else max_registers
        start = end = -1
        points: list[PointSpec] = []
        for span in items:
            if span.count > limit:
                raise ValueError(f"{table} {span.address}..{span.end - 1} is larger than one "
                                 f"read request ({limit})")
            if start >= 0 and span.address - end <= gap and max(end, span.end) - start <= limit:
                end = max(end, span.end)
                points.extend(span.points)
                continue
            if start >= 0:
                blocks.append(ReadBlock(table, start, end - start, tuple(points)))
            start, end, points = span.address, span.end, list(span.points)
        if start >= 0:
            blocks.append(ReadBlock(table, start, end - start, tuple(points)))
    return blocks


def split_at_gaps(block: ReadBlock, spans: Iterable[Span]) -> list[ReadBlock]:
    """``block`` as one request per run of adjacent spans: no unmapped address is read.

    For a device that refuses a read touching an address it does not have
    (exception 0x02) although every mapped point can be read. ``spans`` are
    the device's spans (those inside ``block`` are used; a span, such as a
    tracking ring, is still never split). A block without a gap comes back as
    ``[block]``.
    """
    end = block.address + block.count
    inside = [s for s in spans if s.table == block.table and block.address <= s.address < end]
    pieces = plan_reads(inside, max_gap=0, max_bit_gap=0, max_registers=block.count,
                        max_bits=block.count)
    return [block] if len(pieces) <= 1 else pieces


# Which packed buffer and which struct byte order decode a layout (see module doc):
# "be" holds the registers as sent, "le" has the two bytes of every register swapped.
_ACCESS: Final[dict[Order, tuple[str, str]]] = {
    "ABCD": ("be", ">"), "DCBA": ("be", "<"), "CDAB": ("le", "<"), "BADC": ("le", ">"),
}


@dataclass(slots=True)
class _Pass:
    """One ``struct`` call over one packed buffer, filling some point slots."""

    buffer: str
    unpack: Callable[[bytes], tuple[Any, ...]]
    slots: tuple[int, ...]


class ReadBlock:
    """One read request and the decoder of its response.

    The decoder is compiled once: every point of the same byte layout is
    decoded by a single ``struct.unpack_from`` over the packed response (gaps
    become pad bytes), so a poll costs a few C calls plus the checks that
    only some types need (finite floats, text, scale).
    """

    __slots__ = ("_bit_get", "_floats", "_pack_be", "_pack_le", "_passes", "_scaled",
                 "_strings", "address", "count", "names", "points", "table")

    def __init__(self, table: Table, address: int, count: int,
                 points: Sequence[PointSpec]) -> None:
        self.table: Table = table
        self.address = address
        self.count = count
        self.points = tuple(points)
        self.names = tuple(p.name for p in self.points)
        self._bit_get: Callable[[Sequence[bool]], Any] | None = None
        self._passes: list[_Pass] = []
        self._floats: tuple[int, ...] = ()
        self._strings: tuple[tuple[int, str], ...] = ()
        self._scaled: tuple[tuple[int, float, float], ...] = ()
        packer = struct.Struct(f">{count}H").pack
        self._pack_be = packer
        self._pack_le = struct.Struct(f"<{count}H").pack
        if table in BIT_TABLES:
            self._bit_get = operator.itemgetter(*(p.address - address for p in self.points))
            return
        groups: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(self.points):
            buf, endian = _ACCESS[p.order]
            if p.type == "string":
                # Text has no word order; only the byte swap (the buffer) applies.
                buf, endian = ("le" if p.order in ("BADC", "DCBA") else "be"), ">"
            groups.setdefault((buf, endian), []).append(i)
        for (buf, endian), slots in groups.items():
            fmt, pos = endian, 0
            for i in slots:
                p = self.points[i]
                skip = (p.address - address) * 2 - pos
                if skip:
                    fmt += f"{skip}x"
                fmt += f"{p.length + (p.length & 1)}s" if p.type == "string" else \
                    _STRUCT_CODE[p.type]
                pos = (p.end - address) * 2
            self._passes.append(_Pass(buf, struct.Struct(fmt).unpack_from, tuple(slots)))
        self._floats = tuple(i for i, p in enumerate(self.points) if p.type == "f32")
        self._strings = tuple((i, p.name) for i, p in enumerate(self.points)
                              if p.type == "string")
        self._scaled = tuple((i, p.scale, p.offset) for i, p in enumerate(self.points)
                             if p.type not in ("string", "bool")
                             and (p.scale != 1.0 or p.offset != 0.0))

    def __repr__(self) -> str:
        return f"ReadBlock({self.table} {self.address}+{self.count}: {', '.join(self.names)})"

    def decode(self, raw: Sequence[int] | Sequence[bool]) -> list[Any]:
        """Values of the block's points, in ``points`` order; ``BadValue`` where unusable.

        ``raw`` is the response: registers (ints 0..65535) or bits.
        """
        if self._bit_get is not None:
            got = self._bit_get(raw)  # type: ignore[arg-type]
            return [bool(got)] if len(self.points) == 1 else [bool(b) for b in got]
        regs = raw[: self.count]
        if len(regs) < self.count:
            raise ValueError(f"{self.table} {self.address}: expected {self.count} registers, "
                             f"got {len(regs)}")
        be = self._pack_be(*regs)
        passes = self._passes
        if len(passes) == 1 and passes[0].buffer == "be":
            values = list(passes[0].unpack(be))
        else:
            le = self._pack_le(*regs) if any(p.buffer == "le" for p in passes) else b""
            values = [None] * len(self.points)
            for ps in passes:
                for slot, v in zip(ps.slots, ps.unpack(be if ps.buffer == "be" else le),
                                   strict=True):
                    values[slot] = v
        for i in self._floats:
            v = values[i]
            if not math.isfinite(v):
                values[i] = BadValue("not_finite", f"decodes to {v}", self._raw(be, i))
        for i, _name in self._strings:
            values[i] = _text(values[i], self._raw(be, i))
        for i, scale, offset in self._scaled:
            v = values[i]
            if not isinstance(v, BadValue):
                values[i] = v * scale + offset
        return values

    def _raw(self, be: bytes, i: int) -> bytes:
        p = self.points[i]
        return be[(p.address - self.address) * 2:(p.end - self.address) * 2]


def _text(data: bytes, raw: bytes) -> str | BadValue:
    """PLC strings are padded with NULs or spaces; anything but printable ASCII is bad."""
    text = data.split(b"\x00", 1)[0].rstrip(b" ")
    if not all(0x20 <= b < 0x7F for b in text):
        return BadValue("bad_text", f"not printable ASCII: {text!r}", raw)
    return text.decode("ascii")


def encode(point: PointSpec, value: Any) -> list[int]:
    """Registers holding ``value`` for ``point`` (inverse of decoding; used by simulators).

    Scale and offset are undone first; integers are rounded and range-checked.
    """
    if point.type == "bool":
        raise ValueError("bits are not encoded as registers")
    order = point.order
    if point.type == "string":
        data = str(value).encode("ascii")[: point.length].ljust(point.width * 2, b"\x00")
        if order in ("BADC", "DCBA"):
            return list(struct.unpack(f"<{point.width}H", data))
        return list(struct.unpack(f">{point.width}H", data))
    raw = (value - point.offset) / point.scale if (point.scale, point.offset) != (1.0, 0.0) \
        else value
    code = _STRUCT_CODE[point.type]
    if code != "f":
        raw = round(raw)
    buf, endian = _ACCESS[order]
    packed = struct.pack(endian + code, raw)
    n = len(packed) // 2
    return list(struct.unpack(f"{'>' if buf == 'be' else '<'}{n}H", packed))
