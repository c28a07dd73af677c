"""The simulated conveyor PLC: zones, totes, faults, counters — and its register map.

This module is the PLC program and its memory; ``simulators/conveyor.py``
puts a Modbus TCP server in front of it. The register images are packed here
with ``struct`` directly (not with the gateway's decoder), so the gateway's
decoding is checked against an independent encoder.

Model: ``zones`` zones in a line, each with a photo-eye and a motor. Totes
are inducted into zone 1 at ``tote_rate`` per second, spend ``1000 /
speed_setpoint`` seconds in a zone (1 m zones) and move on when the next
zone is free; leaving the last zone they are scanned (good or no-read
counter). Every move (induct ``0→1``, ``z→z+1``, exit ``Z→0``) is written to
the tracking ring with the next sequence number. A jam holds the whole line
(PackML ``HELD``) until cleared.

Retentive across a *warm* restart: everything. A *cold* restart increments
the boot counter and starts counts, sequences, the ring and the line empty.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Protocol

from simulators.harness.toml import render_toml

STOPPED, EXECUTE, HELD = 2, 6, 11
JAM_CODE: Final = 101
MAX_ZONES: Final = 16
RING_ADDRESS: Final = 100
RING_SLOTS: Final = 12
SLOT_SIZE: Final = 10
TOTE_CHARS: Final = 12
INPUT_SIZE: Final = RING_ADDRESS + RING_SLOTS * SLOT_SIZE
HOLDING_SIZE: Final = 16
#: Faults and moves the simulator keeps for inspection (oldest dropped first).
LOG_LIMIT: Final = 200_000


@dataclass(frozen=True, slots=True)
class Move:
    """One tracking ring entry as the PLC wrote it."""

    boot: int
    seq: int
    tote: str
    from_zone: int
    to_zone: int


@dataclass(slots=True)
class Fault:
    """One raised fault (``cleared`` once it is)."""

    boot: int
    count: int
    code: int
    zone: int
    cleared: bool = False


class PlcListener(Protocol):
    """What a site wants to hear from the PLC program (ground truth, not the register map)."""

    def moved(self, plc: ConveyorPlc, move: Move) -> None:
        """A move was written to the tracking ring."""

    def overwritten(self, plc: ConveyorPlc, move: Move) -> None:
        """A move left the ring without any Modbus read of its slot (lost by the device)."""

    def faulted(self, plc: ConveyorPlc, fault: Fault) -> None:
        """A fault was raised."""

    def cleared(self, plc: ConveyorPlc, fault: Fault) -> None:
        """A fault was cleared."""


def _u32(v: int, word_swap: bool = False) -> list[int]:
    hi, lo = (v >> 16) & 0xFFFF, v & 0xFFFF
    return [lo, hi] if word_swap else [hi, lo]


def _f32(x: float, order: str) -> list[int]:
    a, b, c, d = struct.pack(">f", x)
    return {"ABCD": [a << 8 | b, c << 8 | d], "CDAB": [c << 8 | d, a << 8 | b],
            "BADC": [b << 8 | a, d << 8 | c], "DCBA": [d << 8 | c, b << 8 | a]}[order]


def _bits(flags: list[bool], size: int) -> list[int]:
    words = [0] * ((size + 15) // 16)
    for i, on in enumerate(flags):
        if on:
            words[i // 16] |= 1 << (i % 16)
    return words


class ConveyorPlc:
    """One conveyor line's PLC (pure model: ``tick`` advances it by ``dt`` seconds)."""

    def __init__(self, number: int, *, zones: int = 6, seed: int = 1, tote_rate: float = 1.0,
                 noread_rate: float = 0.02, jam_rate: float = 0.0, jam_clear_s: float = 5.0,
                 counter_start: int = 0) -> None:
        if not 1 <= zones <= MAX_ZONES:
            raise ValueError(f"zones must be 1..{MAX_ZONES}")
        self.number = number
        self.zones = zones
        self.tote_rate = tote_rate
        self.noread_rate = noread_rate
        self.jam_rate = jam_rate
        self.jam_clear_s = jam_clear_s
        self._rng = random.Random(seed * 1000 + number)
        # Retentive memory.
        self.boot = 1
        self.next_tote = number * 1_000_000 + 1
        self.speed_setpoint = 2000  # mm/s
        self.induct_enabled = 1
        self.moves: deque[Move] = deque(maxlen=LOG_LIMIT)
        self.faults: deque[Fault] = deque(maxlen=LOG_LIMIT)
        self.frozen = False
        #: Codes of the totes waiting at the induct (a site feeds them); None: invent codes.
        self.feed: deque[str] | None = None
        self.listener: PlcListener | None = None
        self._cold(counter_start)

    def _cold(self, counter_start: int = 0) -> None:
        self.time = 0.0
        self.heartbeat = 0
        self.state = STOPPED
        self.state_count = 0
        self.fault_active = False
        self.fault_code = 0
        self.fault_zone = 0
        self.fault_count = 0
        self.good_count = counter_start & 0xFFFFFFFF
        self.noread_count = counter_start & 0xFFFFFFFF
        self.tracking_seq = 0
        self.ring: list[Move | None] = [None] * RING_SLOTS
        self.unread: list[bool] = [False] * RING_SLOTS
        self.line: list[str | None] = [None] * self.zones
        self.entered = [0.0] * self.zones
        self._credit = 0.0
        self._auto_clear_at: float | None = None
        self._images: dict[str, list[int]] = {}

    def cold_restart(self) -> None:
        """Power cycle: a new boot; counts, sequences, ring and line start empty."""
        self.boot = (self.boot + 1) & 0xFFFF
        self._cold()

    # -- behaviour -------------------------------------------------------------------

    def _set_state(self, state: int) -> None:
        if state != self.state:
            self.state = state
            self.state_count = (self.state_count + 1) & 0xFFFFFFFF

    def _record(self, tote: str, from_zone: int, to_zone: int) -> None:
        self.tracking_seq = (self.tracking_seq + 1) & 0xFFFFFFFF
        move = Move(self.boot, self.tracking_seq, tote, from_zone, to_zone)
        slot = (self.tracking_seq - 1) % RING_SLOTS
        old = self.ring[slot]
        if self.listener is not None and old is not None and self.unread[slot]:
            self.listener.overwritten(self, old)
        self.ring[slot] = move
        self.unread[slot] = True
        self.moves.append(move)
        if self.listener is not None:
            self.listener.moved(self, move)

    def ring_read(self) -> None:
        """A Modbus read of the tracking ring: every move in it has been seen."""
        self.unread = [False] * RING_SLOTS

    def tick(self, dt: float) -> None:
        """Advance the PLC by ``dt`` seconds (one scan)."""
        self._images.clear()
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        if self.frozen:
            return
        self.time += dt
        if self.state == STOPPED:
            self._set_state(EXECUTE)
        if self._auto_clear_at is not None and self.time >= self._auto_clear_at:
            self.clear()
        if self.state != EXECUTE:
            return
        if self.jam_rate and self._rng.random() < self.jam_rate * dt:
            self.jam(self._rng.randint(1, self.zones))
            if self.jam_clear_s > 0:
                self._auto_clear_at = self.time + self.jam_clear_s
            return
        dwell = 1000.0 / max(self.speed_setpoint, 1)
        line, last = self.line, self.zones - 1
        for z in range(last, -1, -1):
            tote = line[z]
            if tote is None or self.time - self.entered[z] < dwell:
                continue
            if z == last:
                line[z] = None
                self._record(tote, z + 1, 0)
                if self._rng.random() < self.noread_rate:
                    self.noread_count = (self.noread_count + 1) & 0xFFFFFFFF
                else:
                    self.good_count = (self.good_count + 1) & 0xFFFFFFFF
            elif line[z + 1] is None:
                line[z + 1], line[z] = tote, None
                self.entered[z + 1] = self.time
                self._record(tote, z + 1, z + 2)
        self._credit = min(1.0, self._credit + self.tote_rate * dt) if self.induct_enabled \
            else 0.0
        if self.feed is not None:
            if self.feed and line[0] is None:
                tote = self.feed.popleft()
                line[0], self.entered[0] = tote, self.time
                self._record(tote, 0, 1)
        elif self._credit >= 1.0 and line[0] is None:
            self._credit -= 1.0
            tote = f"TOTE-{self.next_tote:07d}"
            self.next_tote += 1
            line[0], self.entered[0] = tote, self.time
            self._record(tote, 0, 1)

    def jam(self, zone: int, code: int = JAM_CODE) -> bool:
        """Raise a fault in ``zone`` (False if one is already active)."""
        if self.fault_active:
            return False
        if not 1 <= zone <= self.zones:
            raise ValueError(f"zone must be 1..{self.zones}")
        self._images.clear()
        self.fault_active, self.fault_code, self.fault_zone = True, code, zone
        self.fault_count = (self.fault_count + 1) & 0xFFFFFFFF
        self.faults.append(Fault(self.boot, self.fault_count, code, zone))
        self._set_state(HELD)
        if self.listener is not None:
            self.listener.faulted(self, self.faults[-1])
        return True

    def clear(self) -> bool:
        """Clear the active fault and resume (False if none was active)."""
        self._auto_clear_at = None
        if not self.fault_active:
            return False
        self._images.clear()
        self.fault_active, self.fault_code, self.fault_zone = False, 0, 0
        self.faults[-1].cleared = True
        self._set_state(EXECUTE)
        if self.listener is not None:
            self.listener.cleared(self, self.faults[-1])
        return True

    def write_holding(self, address: int, value: int) -> None:
        """A Modbus write of a holding register (speed setpoint, induct enable)."""
        self._images.clear()
        if address == 0:
            self.speed_setpoint = value
        elif address == 1:
            self.induct_enabled = value

    # -- register images -------------------------------------------------------------

    def image(self, table: str) -> list[int]:
        """The table's registers (bit tables: 16 bits per word, bit 0 first)."""
        img = self._images.get(table)
        if img is None:
            img = self._images[table] = self._build(table)
        return img

    def _build(self, table: str) -> list[int]:
        running = self.state == EXECUTE
        if table == "coil":
            return _bits([running] * self.zones, 16)
        if table == "discrete_input":
            return _bits([t is not None for t in self.line] + [False] * (16 - self.zones)
                         + [self.fault_active], 32)
        if table == "holding":
            return [self.speed_setpoint, self.induct_enabled] + [0] * (HOLDING_SIZE - 2)
        on_line = sum(t is not None for t in self.line)
        speed = self.speed_setpoint / 1000.0 if running else 0.0
        current = (1.5 + 0.25 * on_line + self._rng.uniform(-0.05, 0.05)) if running else 0.0
        temperature = 24.0 + (self.heartbeat % 600) / 100.0
        regs = [self.heartbeat, self.state, self.boot, self.fault_code, self.fault_zone, on_line]
        regs += _u32(self.fault_count) + _u32(self.state_count)
        regs += _u32(self.good_count, word_swap=True) + _u32(self.noread_count, word_swap=True)
        regs += _f32(speed, "ABCD") + _f32(current, "BADC") + _f32(temperature, "DCBA")
        regs += _u32(self.tracking_seq)
        regs += [0] * (RING_ADDRESS - len(regs))
        for move in self.ring:
            if move is None:
                regs += [0] * SLOT_SIZE
                continue
            text = move.tote.encode("ascii")[:TOTE_CHARS].ljust(TOTE_CHARS, b"\x00")
            regs += _u32(move.seq) + list(struct.unpack(f">{TOTE_CHARS // 2}H", text))
            regs += [move.from_zone, move.to_zone]
        return regs

    def state_dict(self) -> dict[str, Any]:
        """What the PLC holds now (for the control API and tests)."""
        return {
            "number": self.number, "boot": self.boot, "state": self.state,
            "state_count": self.state_count, "heartbeat": self.heartbeat,
            "fault_active": self.fault_active, "fault_code": self.fault_code,
            "fault_zone": self.fault_zone, "fault_count": self.fault_count,
            "good_count": self.good_count, "noread_count": self.noread_count,
            "tracking_seq": self.tracking_seq, "frozen": self.frozen,
            "totes_on_line": sum(t is not None for t in self.line),
            "speed_setpoint": self.speed_setpoint,
        }


def gateway_device(device_id: str, port: int, *, host: str = "127.0.0.1",
                   poll_interval: str = "200ms", extra: dict[str, Any] | None = None,
                   zones: int = 6) -> dict[str, Any]:
    """A gateway ``[[devices]]`` table (as data) mapping one simulated conveyor completely."""
    keys: dict[str, Any] = {"id": device_id, "driver": "modbus", "role": "conveyor",
                            "host": host, "port": port, "unit_id": 1,
                            "poll_interval": poll_interval, "counter_report_interval": "0s"}
    keys.update(extra or {})
    points: list[dict[str, Any]] = []
    for z in range(1, zones + 1):
        points.append({"name": f"motor_{z}", "table": "coil", "address": z - 1, "type": "bool"})
    for z in range(1, zones + 1):
        points.append({"name": f"eye_{z}", "table": "discrete_input", "address": z - 1,
                       "type": "bool"})
    points += [
        {"name": "jam", "table": "discrete_input", "address": 16, "type": "bool",
         "role": "fault_active"},
        {"name": "speed_setpoint", "table": "holding", "address": 0, "scale": 0.001},
        {"name": "induct_enabled", "table": "holding", "address": 1},
        {"name": "heartbeat", "table": "input", "address": 0, "role": "heartbeat"},
        {"name": "state", "table": "input", "address": 1, "role": "state"},
        {"name": "boot", "table": "input", "address": 2, "role": "boot_count"},
        {"name": "fault_code", "table": "input", "address": 3, "role": "fault_code"},
        {"name": "jam_zone", "table": "input", "address": 4, "role": "fault_zone"},
        {"name": "totes_on_line", "table": "input", "address": 5},
        {"name": "fault_count", "table": "input", "address": 6, "type": "u32",
         "role": "fault_count"},
        {"name": "state_count", "table": "input", "address": 8, "type": "u32",
         "role": "state_count"},
        {"name": "good_count", "table": "input", "address": 10, "type": "u32",
         "order": "CDAB", "role": "counter"},
        {"name": "noread_count", "table": "input", "address": 12, "type": "u32",
         "order": "CDAB", "role": "counter"},
        {"name": "speed", "table": "input", "address": 14, "type": "f32"},
        {"name": "motor_current", "table": "input", "address": 16, "type": "f32",
         "order": "BADC"},
        {"name": "belt_temperature", "table": "input", "address": 18, "type": "f32",
         "order": "DCBA"},
        {"name": "tracking_seq", "table": "input", "address": 20, "type": "u32"},
    ]
    keys["points"] = points
    keys["tracking"] = {"table": "input", "address": RING_ADDRESS, "slots": RING_SLOTS,
                        "slot_size": SLOT_SIZE, "seq_offset": 0, "tote_offset": 2,
                        "tote_type": "string", "tote_length": TOTE_CHARS,
                        "from_offset": 8, "to_offset": 9}
    return keys


def gateway_device_toml(device_id: str, port: int, *, host: str = "127.0.0.1",
                        poll_interval: str = "200ms", extra: dict[str, Any] | None = None,
                        zones: int = 6) -> str:
    """:func:`gateway_device` rendered as a TOML ``[[devices]]`` table."""
    return render_toml({"devices": [gateway_device(
        device_id, port, host=host, poll_interval=poll_interval, extra=extra, zones=zones)]})
