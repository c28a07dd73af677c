"""The generic PLC's program and memory: an item counter, a tracking group, a fault bit.

Its register map is a vendor's, not the project's conveyor layout (unit id 1
by default; every address not listed answers exception 0x02)::

    holding  1001-1002  item counter, u32, word order CDAB (low word at 1001)
    holding  2051       tracking sequence, u16, 1..65535 then 1 again (0: nothing tracked yet)
    holding  2052-2059  tracked container, 16 ASCII characters, NUL padded, high byte first
    holding  2060       tracked from (u16)
    holding  2061       tracked to (u16)
    holding  3001       fault code, u16 (0: none)
    input    301-302    motor temperature, f32, word order ABCD, degrees C
    discrete 16         running
    discrete 21         fault active
    coil     8          fault reset (write 1: clears the active fault)

A tracking update writes container, from and to together with the new
sequence (one PLC scan), so a reader never sees one half of an update.
Every change is written to the ledger before it is visible: ``increment``
(one line per +1, with ``value`` after it and ``previous``), ``tracking``,
``fault_raised`` / ``fault_cleared`` and ``temperature``.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from simulators.vendor.ledger import Ledger, RetentiveState, read_ledger

__all__ = ["CONTAINER_CHARS", "COUNTER_ADDRESS", "VendorPlcModel"]

COUNTER_ADDRESS: Final = 1001
SEQ_ADDRESS: Final = 2051
CONTAINER_ADDRESS: Final = 2052
CONTAINER_CHARS: Final = 16
FROM_ADDRESS: Final = 2060
TO_ADDRESS: Final = 2061
FAULT_CODE_ADDRESS: Final = 3001
TEMPERATURE_ADDRESS: Final = 301
RUNNING_BIT: Final = 16
FAULT_BIT: Final = 21
RESET_COIL: Final = 8
#: (table, first address, count) of every mapped range; the rest are holes.
RANGES: Final = (("holding", COUNTER_ADDRESS, 2), ("holding", SEQ_ADDRESS, 11),
                 ("holding", FAULT_CODE_ADDRESS, 1), ("input", TEMPERATURE_ADDRESS, 2),
                 ("discrete_input", 16, 16), ("coil", 0, 16))
_U32: Final = 0xFFFFFFFF
DEFAULT_FAULT_CODE: Final = 17


class VendorPlcModel:
    """The PLC's memory and what changes it; every change goes to the ledger first."""

    def __init__(self, ledger: Ledger, state: RetentiveState) -> None:
        self.ledger = ledger
        self.state = state
        self._recover()
        self.fault_active = False
        self.fault_code = 0
        self.temperature = 35.0
        self.running = True

    @classmethod
    def defaults(cls, counter_start: int) -> dict[str, Any]:
        """The retentive values of a PLC that never ran."""
        return {"counter": counter_start & _U32, "seq": 0, "next_container": 1, "boot": 0,
                "container": "", "from_station": 0, "to_station": 0}

    def _recover(self) -> None:
        # The ledger is written before the state file: after a kill between the
        # two, the ledger holds what was last visible on the wire.
        last: dict[str, dict[str, Any]] = {}
        for entry in read_ledger(self.ledger.path):
            last[entry["kind"]] = entry
        if "increment" in last:
            self.state["counter"] = int(last["increment"]["value"])
        if "tracking" in last:
            t = last["tracking"]
            self.state.values.update(seq=int(t["seq"]), container=str(t["container"]),
                                     from_station=int(t["from_station"]),
                                     to_station=int(t["to_station"]))

    @property
    def counter(self) -> int:
        """The item counter's value."""
        return int(self.state["counter"])

    @property
    def seq(self) -> int:
        """The tracking sequence's value."""
        return int(self.state["seq"])

    @property
    def container(self) -> str:
        """The container of the last tracking update."""
        return str(self.state["container"])

    @property
    def from_station(self) -> int:
        """Where the last tracked container came from."""
        return int(self.state["from_station"])

    @property
    def to_station(self) -> int:
        """Where the last tracked container went."""
        return int(self.state["to_station"])

    def add_items(self, count: int = 1) -> list[dict[str, Any]]:
        """``count`` items counted, one ledger line per increment (wrapping at 2^32)."""
        out = []
        for _ in range(count):
            previous = self.counter
            value = (previous + 1) & _U32
            out.append(self.ledger.write("increment", value=value, previous=previous,
                                         wrapped=value < previous))
            self.state["counter"] = value
            self.state.save()
        return out

    def track(self, container: str | None = None, from_station: int = 1,
              to_station: int = 2) -> dict[str, Any]:
        """One tracking update: a container moved ``from_station`` → ``to_station``."""
        if container is None:
            container = f"CT{self.state['next_container']:08d}"
            self.state["next_container"] += 1
        if len(container) > CONTAINER_CHARS or not container.isascii():
            raise ValueError(f"container must be at most {CONTAINER_CHARS} ASCII characters")
        for name, v in (("from", from_station), ("to", to_station)):
            if not 0 <= v <= 0xFFFF:
                raise ValueError(f"{name} must be 0..65535")
        seq = self.seq % 0xFFFF + 1
        entry = self.ledger.write("tracking", seq=seq, container=container,
                                  from_station=from_station, to_station=to_station)
        self.state.values.update(seq=seq, container=container, from_station=from_station,
                                 to_station=to_station)
        self.state.save()
        return entry

    def set_fault(self, active: bool, code: int = DEFAULT_FAULT_CODE) -> dict[str, Any] | None:
        """Raise (with ``code``) or clear the fault; None when nothing changes."""
        if active == self.fault_active:
            return None
        if active and not 1 <= code <= 0xFFFF:
            raise ValueError("fault code must be 1..65535")
        if active:
            entry = self.ledger.write("fault_raised", code=code)
            self.fault_active, self.fault_code = True, code
        else:
            entry = self.ledger.write("fault_cleared", code=self.fault_code)
            self.fault_active, self.fault_code = False, 0
        return entry

    def set_temperature(self, value: float) -> dict[str, Any]:
        """A new motor temperature reading."""
        entry = self.ledger.write("temperature", value=value)
        self.temperature = value
        return entry

    def image(self, table: str) -> dict[int, int]:
        """``{address: register}`` of a table (bit tables: ``{bit address: 0/1}``)."""
        if table == "holding":
            c = self.counter
            text = self.container.encode("ascii").ljust(CONTAINER_CHARS, b"\x00")
            regs = {COUNTER_ADDRESS: c & 0xFFFF, COUNTER_ADDRESS + 1: c >> 16,
                    SEQ_ADDRESS: self.seq, FROM_ADDRESS: self.from_station,
                    TO_ADDRESS: self.to_station, FAULT_CODE_ADDRESS: self.fault_code}
            for i, word in enumerate(struct.unpack(f">{CONTAINER_CHARS // 2}H", text)):
                regs[CONTAINER_ADDRESS + i] = word
            return regs
        if table == "input":
            hi, lo = struct.unpack(">2H", struct.pack(">f", self.temperature))
            return {TEMPERATURE_ADDRESS: hi, TEMPERATURE_ADDRESS + 1: lo}
        if table == "discrete_input":
            return {RUNNING_BIT: int(self.running), FAULT_BIT: int(self.fault_active)}
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the PLC holds now (for the control API and tests)."""
        return {"counter": self.counter, "seq": self.seq, "container": self.container,
                "from_station": self.from_station, "to_station": self.to_station,
                "fault_active": self.fault_active, "fault_code": self.fault_code,
                "temperature": self.temperature, "running": self.running,
                "boot": self.state["boot"], "ledger_lines": self.ledger.count}
