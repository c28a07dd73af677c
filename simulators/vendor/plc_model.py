"""The generic PLC's program and memory: an item counter, a tracking group, a fault bit.

Its register map is a vendor's, not the project's conveyor layout (the
generic conveyor PLC of docs/mapping.md; unit id 1 by default; every address
not listed answers exception 0x02, so a read bridging a hole is refused)::

    holding  1          boot counter, u16, +1 at every start
    holding  11-12      item counter, u32, word order CDAB (low word at 11)
    holding  21-22      tracking sequence, u32 ABCD, +1 per update (0: nothing tracked yet)
    holding  23-27      tracked tote, 10 ASCII characters, NUL padded, high byte first
    holding  29         tracked from (u16): 1 INDUCT-1, 2 MERGE-1
    holding  31         tracked to (u16): 5 PACK-1, 6 PACK-2
    holding  41         fault code, u16 (0: none)
    input    3          motor temperature, i16, tenths of a degree C
    coil     5          fault active
    coil     8          fault reset (write 1: clears the active fault)
    discrete 0          running

A tracking update changes tote, from and to together with the new sequence
(one PLC scan). Every change is written to the ledger before it is visible:
``increment`` (one line per +1, with ``value`` after it, ``previous`` and
``wrapped``), ``tracking``, ``fault_raised`` / ``fault_cleared`` and
``temperature``; ``boot`` at every start.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from simulators.vendor.ledger import Ledger, RetentiveState, read_ledger

__all__ = ["TOTE_CHARS", "VendorPlcModel"]

BOOT_ADDRESS: Final = 1
COUNTER_ADDRESS: Final = 11
SEQ_ADDRESS: Final = 21
TOTE_ADDRESS: Final = 23
TOTE_CHARS: Final = 10
FROM_ADDRESS: Final = 29
TO_ADDRESS: Final = 31
FAULT_CODE_ADDRESS: Final = 41
TEMPERATURE_ADDRESS: Final = 3
FAULT_COIL: Final = 5
RESET_COIL: Final = 8
RUNNING_BIT: Final = 0
#: (table, first address, count) of every mapped range; the rest are holes.
RANGES: Final = (("holding", BOOT_ADDRESS, 1), ("holding", COUNTER_ADDRESS, 2),
                 ("holding", SEQ_ADDRESS, 2 + TOTE_CHARS // 2), ("holding", FROM_ADDRESS, 1),
                 ("holding", TO_ADDRESS, 1), ("holding", FAULT_CODE_ADDRESS, 1),
                 ("input", TEMPERATURE_ADDRESS, 1), ("coil", 0, 16),
                 ("discrete_input", 0, 16))
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

    def boot(self) -> dict[str, Any]:
        """A start: the boot counter counts it."""
        self.state["boot"] = (int(self.state["boot"]) + 1) & 0xFFFF
        self.state.save()
        return self.ledger.write("boot", boot=self.state["boot"])

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
            container = f"TOTE-{self.state['next_container'] % 100_000:05d}"
            self.state["next_container"] += 1
        if len(container) > TOTE_CHARS or not container.isascii():
            raise ValueError(f"container must be at most {TOTE_CHARS} ASCII characters")
        for name, v in (("from", from_station), ("to", to_station)):
            if not 0 <= v <= 0xFFFF:
                raise ValueError(f"{name} must be 0..65535")
        seq = self.seq % _U32 + 1
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
            c, seq = self.counter, self.seq
            text = self.container.encode("ascii").ljust(TOTE_CHARS, b"\x00")
            regs = {BOOT_ADDRESS: int(self.state["boot"]),
                    COUNTER_ADDRESS: c & 0xFFFF, COUNTER_ADDRESS + 1: c >> 16,
                    SEQ_ADDRESS: seq >> 16, SEQ_ADDRESS + 1: seq & 0xFFFF,
                    FROM_ADDRESS: self.from_station, TO_ADDRESS: self.to_station,
                    FAULT_CODE_ADDRESS: self.fault_code}
            for i, word in enumerate(struct.unpack(f">{TOTE_CHARS // 2}H", text)):
                regs[TOTE_ADDRESS + i] = word
            return regs
        if table == "input":
            return {TEMPERATURE_ADDRESS: round(self.temperature * 10) & 0xFFFF}
        if table == "coil":
            return {FAULT_COIL: int(self.fault_active)}
        return {RUNNING_BIT: int(self.running)}

    def state_dict(self) -> dict[str, Any]:
        """What the PLC holds now (for the control API and tests)."""
        return {"counter": self.counter, "seq": self.seq, "container": self.container,
                "from_station": self.from_station, "to_station": self.to_station,
                "fault_active": self.fault_active, "fault_code": self.fault_code,
                "temperature": self.temperature, "running": self.running,
                "boot": self.state["boot"], "ledger_lines": self.ledger.count}
