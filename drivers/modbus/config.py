"""Config model of a Modbus TCP device (a conveyor PLC) — ``driver = "modbus"``.

A device is a register map: named *points*, each at a place in one of the
four Modbus tables, with a type and a *role* telling the conveyor recognizer
what the point means; plus an optional *tracking ring* (the PLC's log of tote
moves). Validation rejects what would fail or mislead at run time: overlaps,
addresses past the table, 32-bit types on bits, duplicate names, and roles
missing the points their events need (see ``docs/conveyor-modbus.md``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.modbus.registers import (
    BIT_TABLES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    Order,
    PointSpec,
    Span,
    Table,
    ValueType,
)
from gateway.core.config import DeviceModel, Duration, Identifier, Model, PositiveDuration

if TYPE_CHECKING:
    from gateway.core.protocols import Driver, DriverContext

PointName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
Address = Annotated[int, Field(ge=0, le=65535)]

Role = Literal[
    "telemetry", "heartbeat", "state", "state_count", "boot_count",
    "fault_active", "fault_code", "fault_zone", "fault_count", "counter",
]
#: Roles a device may map at most once.
SINGLE_ROLES: tuple[str, ...] = ("heartbeat", "state", "state_count", "boot_count", "fault_active",
                "fault_code", "fault_zone", "fault_count")
_COUNTING = ("counter", "fault_count", "state_count", "boot_count")
_INTEGER = ("u16", "i16", "u32", "i32")


class Point(Model):
    """One named value in the register map."""

    name: PointName
    table: Table
    address: Address
    type: ValueType = "u16"
    role: Role = "telemetry"
    #: 32-bit layout / byte order; default: the device's ``order``.
    order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    #: Characters of a ``string`` point.
    length: Annotated[int, Field(ge=1, le=250)] | None = None

    @model_validator(mode="after")
    def _check(self) -> Point:
        bits = self.table in BIT_TABLES
        if bits and self.type != "bool":
            raise ValueError(f"type {self.type!r} needs registers, but table {self.table!r} "
                             "holds single bits; use type 'bool' or table 'holding'/'input'")
        if not bits and self.type == "bool":
            raise ValueError(f"type 'bool' is for tables 'coil' and 'discrete_input', not "
                             f"{self.table!r}")
        if self.type == "string" and self.length is None:
            raise ValueError("type 'string' needs 'length' (characters)")
        if self.type != "string" and self.length is not None:
            raise ValueError("'length' is only for type 'string'")
        if self.type in ("bool", "string") and (self.scale, self.offset) != (1.0, 0.0):
            raise ValueError(f"'scale'/'offset' do not apply to type {self.type!r}")
        if self.scale == 0:
            raise ValueError("'scale' may not be 0")
        if self.role in _COUNTING:
            if self.type not in ("u16", "u32"):
                raise ValueError(f"role {self.role!r} needs an unsigned counter type 'u16' or "
                                 f"'u32', got {self.type!r}")
            if (self.scale, self.offset) != (1.0, 0.0):
                raise ValueError(f"role {self.role!r} counts: 'scale'/'offset' do not apply")
        if self.role in ("state", "fault_code", "fault_zone") and self.type not in _INTEGER:
            raise ValueError(f"role {self.role!r} needs an integer type, got {self.type!r}")
        if self.role == "fault_active" and self.type not in ("bool", *_INTEGER):
            raise ValueError(f"role 'fault_active' needs type 'bool' or an integer, "
                             f"got {self.type!r}")
        width = 1 if self.type == "bool" else self.spec("ABCD").width
        if self.address + width - 1 > 65535:
            raise ValueError(f"address {self.address} + {width} runs past the end of the "
                             "table (65535)")
        return self

    def spec(self, default_order: Order) -> PointSpec:
        """The runtime description of this point."""
        return PointSpec(name=self.name, table=self.table, address=self.address,
                         type=self.type, order=self.order or default_order,
                         scale=self.scale, offset=self.offset, length=self.length or 0)


class Tracking(Model):
    """The PLC's tracking ring: the last ``slots`` tote moves, each with its sequence.

    Slot ``i`` starts at ``address + i * slot_size``; inside a slot the fields
    sit at the given offsets: a u32 move sequence (0 = empty slot), the tote id
    and the from/to zone numbers (u16, 0 = outside the conveyor).
    """

    table: Literal["holding", "input"] = "input"
    address: Address
    slots: Annotated[int, Field(ge=1, le=125)]
    slot_size: Annotated[int, Field(ge=4, le=125)]
    seq_offset: Annotated[int, Field(ge=0)] = 0
    tote_offset: Annotated[int, Field(ge=0)] = 2
    tote_type: Literal["string", "u16", "u32"] = "string"
    tote_length: Annotated[int, Field(ge=1, le=240)] = 12
    from_offset: Annotated[int, Field(ge=0)]
    to_offset: Annotated[int, Field(ge=0)]

    def slot_points(self, order: Order) -> list[PointSpec]:
        """The generated points of every slot: ``tracking[i].seq|tote|from|to``."""
        out: list[PointSpec] = []
        for i in range(self.slots):
            base = self.address + i * self.slot_size
            out += [
                PointSpec(f"tracking[{i}].seq", self.table, base + self.seq_offset, "u32", order),
                PointSpec(f"tracking[{i}].tote", self.table, base + self.tote_offset,
                          self.tote_type, order,
                          length=self.tote_length if self.tote_type == "string" else 0),
                PointSpec(f"tracking[{i}].from", self.table, base + self.from_offset, "u16",
                          order),
                PointSpec(f"tracking[{i}].to", self.table, base + self.to_offset, "u16", order),
            ]
        return out

    @model_validator(mode="after")
    def _check(self) -> Tracking:
        fields = self.slot_points("ABCD")[:4]
        used: list[tuple[int, int, str]] = []
        for p in fields:
            lo = p.address - self.address
            hi = lo + p.width
            if hi > self.slot_size:
                raise ValueError(f"tracking field {p.name.split('.')[1]!r} (offset {lo}, "
                                 f"{p.width} registers) does not fit in slot_size "
                                 f"{self.slot_size}")
            for olo, ohi, oname in used:
                if lo < ohi and olo < hi:
                    raise ValueError(f"tracking fields {oname!r} and "
                                     f"{p.name.split('.')[1]!r} overlap")
            used.append((lo, hi, p.name.split(".")[1]))
        total = self.slots * self.slot_size
        if total > MAX_READ_REGISTERS:
            raise ValueError(f"the tracking ring ({self.slots} slots x {self.slot_size} = "
                             f"{total} registers) must fit one read request "
                             f"({MAX_READ_REGISTERS} registers) so it is read atomically")
        if self.address + total - 1 > 65535:
            raise ValueError("the tracking ring runs past the end of the table (65535)")
        return self

    def span(self, order: Order) -> Span:
        """The ring as one indivisible read span."""
        return Span(self.table, self.address, self.slots * self.slot_size,
                    tuple(self.slot_points(order)))


class ModbusDevice(DeviceModel):
    """A Modbus TCP device polled with a register map."""

    KIND: ClassVar[str] = "modbus"
    ROLES: ClassVar[tuple[str, ...]] = ("conveyor", "pack_station")


    id: Identifier
    driver: Literal["modbus"]
    role: str = "conveyor"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    #: Modbus unit identifier (``device_id`` on the wire).
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    poll_interval: PositiveDuration = 0.5
    #: Limit of every request (connect and each read).
    timeout: PositiveDuration = 2.0
    backoff_initial: PositiveDuration = 0.5
    backoff_max: PositiveDuration = 30.0
    #: Unmapped registers / bits a read may bridge to save a request (0: never).
    max_gap: Annotated[int, Field(ge=0, le=MAX_READ_REGISTERS)] = 8
    max_bit_gap: Annotated[int, Field(ge=0, le=MAX_READ_BITS)] = 64
    #: Largest read request (lower it for devices that refuse 125 registers).
    max_registers: Annotated[int, Field(ge=1, le=MAX_READ_REGISTERS)] = MAX_READ_REGISTERS
    max_bits: Annotated[int, Field(ge=1, le=MAX_READ_BITS)] = MAX_READ_BITS
    #: Default layout of 32-bit values and byte order of every register.
    order: Order = "ABCD"
    #: Names of zone numbers (``{"1" = "INDUCT-1"}``); others are ``Z01``, ``Z02``...
    zones: dict[str, str] = Field(default_factory=dict)
    #: Fault codes that are jams (``reason = "jam"``); other codes are ``"fault"``.
    jam_codes: list[int] = Field(default_factory=lambda: [101])
    #: Least time between two telemetry events of one counter (0: every change).
    counter_report_interval: Duration = 10.0
    #: The heartbeat point not changing this long raises an alert (0: off).
    heartbeat_timeout: Duration = 5.0
    location: str | None = None
    points: list[Point] = Field(default_factory=list)
    tracking: Tracking | None = None
    #: A pack station's field map over points (``[devices.station]``, docs/stations.md).
    station: Any = None

    @model_validator(mode="after")
    def _check(self) -> ModbusDevice:
        if not self.points and self.tracking is None:
            raise ValueError("the register map is empty: add [[devices.points]] or "
                             "[devices.tracking]")
        dup = [n for n, c in Counter(p.name for p in self.points).items() if c > 1]
        if dup:
            raise ValueError(f"duplicate point name(s): {', '.join(sorted(dup))}")
        for key in self.zones:
            if not key.isdigit() or not 1 <= int(key) <= 65535:
                raise ValueError(f"zones: key {key!r} must be a zone number 1..65535")
        self._check_overlaps()
        self._check_roles()
        return self

    def _check_overlaps(self) -> None:
        spans = [(s.table, s.address, s.end, s.points[0].name) for s in self.spans()]
        if self.tracking is not None:
            spans = [(t, a, e, n) for t, a, e, n in spans if not n.startswith("tracking[")]
            ring = self.tracking.span(self.order)
            spans.append((ring.table, ring.address, ring.end, "tracking ring"))
        spans.sort()
        for (t1, a1, e1, n1), (t2, a2, _e2, n2) in itertools.pairwise(spans):
            if t1 == t2 and a2 < e1:
                raise ValueError(f"{n1!r} ({t1} {a1}..{e1 - 1}) overlaps {n2!r} "
                                 f"({t2} address {a2})")

    def _check_roles(self) -> None:
        roles: Counter[str] = Counter(p.role for p in self.points)
        for role in SINGLE_ROLES:
            if roles[role] > 1:
                raise ValueError(f"role {role!r} may be mapped once, found {roles[role]} points")
        needs_boot = [r for r in ("counter", "fault_count", "state_count") if roles[r]]
        if self.tracking is not None:
            needs_boot.append("tracking")
        if needs_boot and not roles["boot_count"]:
            raise ValueError(
                f"{', '.join(repr(r) for r in needs_boot)} need a point with role 'boot_count' "
                "(a retentive word the PLC increments when it restarts or resets its "
                "counters): event ids are built from it so a restarted count never repeats one"
            )
        if (roles["fault_active"] or roles["fault_code"] or roles["fault_zone"]) and \
                not roles["fault_count"]:
            raise ValueError("fault roles need a point with role 'fault_count' (faults raised "
                             "since boot): jam and fault event ids are built from it")
        if roles["fault_count"] and not (roles["fault_active"] or roles["fault_code"]):
            raise ValueError("role 'fault_count' needs a point with role 'fault_active' or "
                             "'fault_code' to tell an active fault from a cleared one")
        if roles["state_count"] and not roles["state"]:
            raise ValueError("role 'state_count' needs a point with role 'state'")

    def point_specs(self) -> list[PointSpec]:
        """Runtime descriptions of the mapped points (tracking ring excluded)."""
        return [p.spec(self.order) for p in self.points]

    def spans(self) -> list[Span]:
        """Read spans: one per point, the tracking ring as one."""
        spans = [Span(s.table, s.address, s.width, (s,)) for s in self.point_specs()]
        if self.tracking is not None:
            spans.append(self.tracking.span(self.order))
        return spans

    def role_points(self) -> dict[str, list[str]]:
        """Point names by role."""
        out: dict[str, list[str]] = {}
        for p in self.points:
            out.setdefault(p.role, []).append(p.name)
        return out

    def counter_moduli(self) -> dict[str, int]:
        """Counter point -> the value at which it wraps to 0."""
        return {p.name: 1 << (16 if p.type == "u16" else 32)
                for p in self.points if p.role == "counter"}

    @classmethod
    def build(cls, ctx: DriverContext[Any]) -> Driver:
        """The running driver for ``ctx.devices``."""
        from drivers.modbus.driver import ModbusDriver

        return ModbusDriver(ctx)
