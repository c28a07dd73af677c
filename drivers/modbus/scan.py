"""Which addresses of a Modbus table answer, for writing a device's register map.

``scan_device`` reads ``start..end`` of one table in requests as large as the
device's ``max_registers``/``max_bits`` allow and
splits a refused request in halves until each address is known:

- an answer: the address answers, with its value;
- exception 0x02 (illegal data address), or any exception other than 0x01:
  the request is split; a single address with it is a hole;
- 0x01 (illegal function): the device does not serve this table at all — the
  rest of the range is reported as such, without further requests;
- no answer within the device's ``timeout`` (some devices stay silent for an
  unmapped address): split like a refusal, on a fresh connection (a late
  answer must not be taken for the next request's); after ``max_timeouts``
  silent requests the addresses not probed yet are reported unprobed.

Consecutive addresses with the same outcome are reported as one range.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.config import ModbusDevice
from drivers.modbus.connect import CannotConnect, open_client
from drivers.modbus.registers import exception_text

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

ScanTable = Literal["holding", "input", "coil", "discrete_input"]
#: The highest Modbus address.
MAX_ADDRESS = 65535


@dataclass(frozen=True, slots=True)
class ScanRange:
    """Consecutive addresses with one outcome.

    ``status``: ``answers`` (``values`` holds one value per address),
    ``illegal_address`` (0x02), ``exception`` (another code, in ``detail``),
    ``unsupported`` (0x01: no such table on this device), ``no_answer``
    (timeouts), ``not_probed`` (the timeout budget was spent).
    """

    table: str
    start: int
    end: int
    status: str
    values: tuple[int | bool, ...] = ()
    detail: str | None = None


class NotReachable(ConnectionError):
    """No connection to the device (the message says why)."""


@dataclass(slots=True)
class _Outcome:
    status: str
    value: int | bool | None = None
    detail: str | None = None


class _Scanner:
    def __init__(self, dev: ModbusDevice, table: ScanTable, max_timeouts: int) -> None:
        self.dev = dev
        self.table = table
        self.client: AsyncModbusTcpClient | None = None
        self.timeouts_left = max_timeouts
        self.requests = 0

    async def connect(self) -> AsyncModbusTcpClient:
        if self.client is not None and self.client.connected:
            return self.client
        self.close()
        try:
            client = await open_client(self.dev)
        except CannotConnect as err:
            raise NotReachable(str(err)) from None
        self.client = client
        return client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def read(self, address: int, count: int) -> tuple[str, Any]:
        """("ok", values) | ("exception", code) | ("timeout", None)."""
        client = await self.connect()
        call = {"holding": client.read_holding_registers, "input": client.read_input_registers,
                "coil": client.read_coils, "discrete_input": client.read_discrete_inputs
                }[self.table]
        self.requests += 1
        try:
            async with asyncio.timeout(self.dev.timeout + 0.5):
                rr = await call(address, count=count, device_id=self.dev.unit_id)
        except (TimeoutError, ModbusException, OSError):
            self.close()  # a late answer must not be read as the next request's
            return "timeout", None
        if rr.isError():
            return "exception", int(getattr(rr, "exception_code", 0))
        values: Sequence[Any] = rr.bits if self.table in ("coil", "discrete_input") \
            else rr.registers
        return "ok", list(values)[:count]

    async def scan(self, start: int, end: int) -> dict[int, _Outcome]:
        found: dict[int, _Outcome] = {}
        # The device's own request limits (Modbus allows 125 registers, 2000 bits).
        block = (self.dev.max_bits if self.table in ("coil", "discrete_input")
                 else self.dev.max_registers)
        todo = [(a, min(block, end - a + 1)) for a in range(start, end + 1, block)]
        todo.reverse()
        while todo:
            address, count = todo.pop()
            if self.timeouts_left <= 0:
                for a in range(address, address + count):
                    found[a] = _Outcome("not_probed")
                continue
            kind, result = await self.read(address, count)
            if kind == "ok":
                for i, v in enumerate(result):
                    found[address + i] = _Outcome("answers", v)
                continue
            if kind == "exception" and result == 0x01:
                for a in range(address, end + 1):
                    found.setdefault(a, _Outcome("unsupported", detail=exception_text(1)))
                return found
            if kind == "timeout":
                self.timeouts_left -= 1
            if count > 1:
                half = count // 2
                todo.append((address + half, count - half))
                todo.append((address, half))
            elif kind == "timeout":
                found[address] = _Outcome("no_answer", detail=f"no answer within "
                                                              f"{self.dev.timeout:g}s")
            elif result == 0x02:
                found[address] = _Outcome("illegal_address", detail=exception_text(2))
            else:
                found[address] = _Outcome("exception", detail=exception_text(result))
        return found


def _ranges(table: str, found: dict[int, _Outcome]) -> list[ScanRange]:
    out: list[ScanRange] = []
    run: list[tuple[int, _Outcome]] = []

    def flush() -> None:
        if run:
            first = run[0][1]
            values = tuple(o.value for _, o in run if o.value is not None) \
                if first.status == "answers" else ()
            out.append(ScanRange(table, run[0][0], run[-1][0], first.status, values,
                                 first.detail))
            run.clear()

    for address in sorted(found):
        outcome = found[address]
        if run and (run[-1][0] != address - 1 or run[-1][1].status != outcome.status
                    or run[-1][1].detail != outcome.detail):
            flush()
        run.append((address, outcome))
    flush()
    return out


async def scan_device(dev: ModbusDevice, table: ScanTable, start: int, end: int, *,
                      max_timeouts: int = 16) -> list[ScanRange]:
    """The outcome of every address ``start..end`` of ``table``, as ranges.

    Raises ``NotReachable`` when the device accepts no connection.
    """
    if not 0 <= start <= end <= MAX_ADDRESS:
        raise ValueError(f"addresses must satisfy 0 <= start <= end <= {MAX_ADDRESS}; "
                         f"got {start}..{end}")
    scanner = _Scanner(dev, table, max_timeouts)
    try:
        await scanner.connect()
        return _ranges(table, await scanner.scan(start, end))
    finally:
        scanner.close()
