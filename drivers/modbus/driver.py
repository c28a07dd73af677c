"""Modbus TCP driver: polls one PLC's register map and hands the changes to its ingest pipeline.

One connection per device and one request at a time on it (a PLC serves its
Modbus clients from a small queue; a second outstanding request only waits
there). Each poll reads the planned blocks (``registers.plan_reads``),
decodes every point, and passes only the points that changed to the
recognizer (gateway/ingest.py). Its events are appended to the store and awaited, so a
full or slow store slows polling down instead of piling records up in memory.

Failures never leave ``run``:

- no connection, a timeout, a dropped connection → the device is
  unavailable; reconnect after a capped, jittered backoff;
- a Modbus exception response (0x01 to 0x0B) → the device is unavailable with
  an error naming the code; the connection is kept and the poll retried
  after the backoff;
- 0x02 (illegal data address) for a request that bridges unmapped addresses
  between points (``max_gap``) → the request is split at its gaps, the new
  plan kept for the driver's life and logged once (``modbus_read_split``);
  the poll goes on. 0x02 for a request without a gap is a device error;
- a value that cannot be a signal (NaN, infinity, non-ASCII text, a short
  response) → an ingest dead letter holding the raw registers, counted and
  logged throttled per device and kind; the other points of the poll go on.

``Availability`` logs once when the device goes away and once when it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.base import Availability
from drivers.modbus.config import ModbusDevice
from drivers.modbus.connect import CannotConnect, open_client
from drivers.modbus.registers import (
    BadValue,
    ReadBlock,
    exception_text,
    plan_reads,
    split_at_gaps,
)
from gateway.core.aio import raise_if_cancelling
from gateway.core.alert import Alert
from gateway.core.backoff import Backoff
from gateway.core.errors import IngestError
from gateway.core.events import Signal
from gateway.core.protocols import DriverContext
from gateway.core.records import Record

log = structlog.get_logger(__name__)

# The driver reports device faults itself, once per outage; the library's own
# line per failed attempt would repeat that at every poll.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)



class DeviceError(Exception):
    """A poll failed; ``reconnect`` says whether the connection is suspect."""

    def __init__(self, message: str, *, reconnect: bool) -> None:
        super().__init__(message)
        self.reconnect = reconnect


class IllegalAddress(DeviceError):
    """The device answered 0x02 (illegal data address) to the read of ``block``."""

    def __init__(self, message: str, block: ReadBlock) -> None:
        super().__init__(message, reconnect=False)
        self.block = block


class ModbusDriver:
    """Polls one Modbus TCP device."""

    def __init__(self, ctx: DriverContext[ModbusDevice]) -> None:
        (device,) = ctx.devices
        self.site = ctx.site
        self.device = device
        self.name = f"modbus-{device.id}"
        self.ingest = ctx.ingest
        self.pipe = pipe = ctx.ingest.device(device.id)
        pipe.bind(self._describe_poll)
        self._clock = ctx.clock
        self.blocks: list[ReadBlock] = plan_reads(
            device.spans(), max_gap=device.max_gap, max_bit_gap=device.max_bit_gap,
            max_registers=device.max_registers, max_bits=device.max_bits)
        self.points_per_poll = sum(len(b.points) for b in self.blocks)
        self._watched = pipe.inputs if pipe.inputs is not None else frozenset(
            name for b in self.blocks for name in b.names)
        heartbeat = device.role_points().get("heartbeat")
        self._heartbeat: str | None = heartbeat[0] if heartbeat else None
        self._hb_at = _slot_of(self.blocks, self._heartbeat)
        self._bad_response: list[Any] = [None] * len(self.blocks)
        self._last: list[list[Any] | None] = [None] * len(self.blocks)
        self.availability = Availability(device.id, "modbus")
        self._backoff = Backoff(device.backoff_initial, device.backoff_max)
        self._client: AsyncModbusTcpClient | None = None
        self._paused = False
        self.polls = 0
        self.points_read = 0
        self.requests = 0
        self.exceptions: Counter[str] = Counter()
        self.connects = 0
        self.failures = 0
        self.last_poll_ms = 0.0
        self.last_poll_at: float | None = None
        self._hb_value: Any = None
        self._hb_changed_at: float | None = None
        self.heartbeat_stale = False
        self._unexpected: set[str] = set()

    # -- Driver protocol ---------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled; faults are reported and retried, never raised."""
        flusher = asyncio.create_task(self.ingest.run(), name=f"{self.name}-log-flush")
        try:
            while not self._paused:
                raise_if_cancelling()
                try:
                    await self._connect()
                    await self._poll_loop()
                except DeviceError as err:
                    self._failed(str(err), reconnect=err.reconnect)
                except Exception as err:  # a library surprise must not end the gateway
                    if type(err).__name__ not in self._unexpected:
                        self._unexpected.add(type(err).__name__)
                        log.exception("modbus_unexpected_error", device=self.device.id)
                    self._failed(f"unexpected error: {err!r}", reconnect=True)
                else:
                    continue
                await asyncio.sleep(max(self._backoff.next(), 0.01))
            await asyncio.Event().wait()  # paused: wait for cancellation
        finally:
            flusher.cancel()
            self._close()

    def _failed(self, error: str, *, reconnect: bool) -> None:
        self.failures += 1
        self.availability.down(error, host=self.device.host, port=self.device.port)
        if reconnect:
            self._close()

    def pause(self) -> None:
        """Stop polling after the current poll (its records still commit)."""
        self._paused = True

    def ready(self) -> bool:
        """Polling drivers have no gateway-side link: always ready."""
        return True

    def alerts(self) -> list[Alert]:
        """The device unavailable, its PLC program no longer running, an open jam or fault."""
        out = []
        a = self.availability
        subject = f"device:{self.device.id}"
        if not a.available and a.last_error is not None:  # not while first connecting
            out.append(Alert("device_unavailable", subject,
                             f"device {self.device.id} unavailable: {a.last_error}",
                             since=a.down_since, detail=a.last_error))
        elif self.heartbeat_stale:
            out.append(Alert("device_heartbeat_stale", subject,
                             f"device {self.device.id}: heartbeat {self._heartbeat!r} has not "
                             f"changed for {self.device.heartbeat_timeout:g}s "
                             "(PLC program stopped?)"))
        out.extend(self.pipe.alerts())
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-device figures for the status API."""
        now = self._clock()
        figures = self.pipe.snapshot()
        a = self.availability
        return {self.device.id: {
            "driver": "modbus",
            "role": self.device.role,
            "host": self.device.host,
            "port": self.device.port,
            "unit_id": self.device.unit_id,
            "connected": a.available,
            "last_error": a.last_error,
            "outages": a.outages,
            "connects": self.connects,
            "failures": self.failures,
            "polls": self.polls,
            # Polls in which a watched point changed (the inputs of its recognizer).
            "messages": figures["inputs"],
            "requests": self.requests,
            "requests_per_poll": len(self.blocks),
            "points_per_poll": self.points_per_poll,
            "points_read": self.points_read,
            "last_poll_ms": round(self.last_poll_ms, 3),
            "last_seen_s_ago": None if self.last_poll_at is None
            else round(now - self.last_poll_at, 1),
            "exceptions": dict(self.exceptions),
            "ingest_errors": figures.pop("ingest_errors"),
            "heartbeat_stale": self.heartbeat_stale,
            **figures,
            "points": self._point_values(),
        }}

    # -- connection ----------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._client is not None and self._client.connected:
            return
        self._close()
        try:
            client = await open_client(self.device)
        except CannotConnect as err:
            raise DeviceError(str(err), reconnect=True) from None
        self._client = client  # closed by ``run`` if the next line raises
        raise_if_cancelling()
        self.connects += 1
        # A new connection may face a restarted PLC: compare nothing with before.
        self._last = [None] * len(self.blocks)

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- polling -------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.device.poll_interval
        next_at = loop.time()
        while not self._paused:
            records = await self._poll()
            self.availability.up(host=self.device.host, port=self.device.port)
            self._backoff.reset()
            if records:
                await self.pipe.append(records)
            next_at += interval
            delay = next_at - loop.time()
            if delay <= 0:  # behind: poll again now, but never in a burst to catch up
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def _read(self, block: ReadBlock) -> Sequence[int] | Sequence[bool]:
        client = self._client
        if client is None or not client.connected:
            raise DeviceError("connection lost", reconnect=True)
        dev = self.device
        if block.table == "input":
            call = client.read_input_registers
        elif block.table == "holding":
            call = client.read_holding_registers
        elif block.table == "coil":
            call = client.read_coils
        else:
            call = client.read_discrete_inputs
        what = f"{block.table} {block.address}..{block.address + block.count - 1}"
        self.requests += 1
        try:
            async with asyncio.timeout(dev.timeout):
                rr = await call(block.address, count=block.count, device_id=dev.unit_id)
            raise_if_cancelling()
        except TimeoutError:
            raise DeviceError(f"no answer within {dev.timeout:g}s reading {what}",
                              reconnect=True) from None
        except (ModbusException, OSError) as err:
            raise DeviceError(f"reading {what}: {err}", reconnect=True) from None
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            text = exception_text(code)
            self.exceptions[text] += 1
            if code == 0x02:
                raise IllegalAddress(f"{text} reading {what}", block)
            raise DeviceError(f"{text} reading {what}", reconnect=False)
        return rr.bits if block.table in ("coil", "discrete_input") else rr.registers

    async def _poll(self) -> list[Record]:
        t0 = time.perf_counter()
        try:
            raws = [await self._read(block) for block in self.blocks]
        except IllegalAddress as err:
            if not self._split(err.block):
                raise
            return await self._poll()  # with the new plan (a piece is never split again)
        now = self._clock()
        dev_id = self.device.id
        watched = self._watched
        signals: list[Signal] = []
        records: list[Record] = []
        for bi, block in enumerate(self.blocks):
            try:
                values = block.decode(raws[bi])
            except (ValueError, TypeError) as err:
                self._last[bi] = None
                if self._bad_response[bi] != list(raws[bi]):  # report a new one only
                    self._bad_response[bi] = list(raws[bi])
                    records.append(self._dead_letter(
                        block, None, IngestError("bad_response", str(err)), raws[bi]))
                continue
            self._bad_response[bi] = None
            prev = self._last[bi]
            if prev is not None and values == prev:
                continue
            self._last[bi] = values
            for i, value in enumerate(values):
                if prev is not None and prev[i] == value:
                    continue
                name = block.names[i]
                if isinstance(value, BadValue):
                    records.append(self._dead_letter(
                        block, i, IngestError(value.kind, value.detail), value.raw))
                    if name in watched:  # the recognizer must not go on with a stale value
                        signals.append(Signal(dev_id, name, None, now, quality="bad"))
                elif name in watched:
                    signals.append(Signal(dev_id, name, value, now))
        self.polls += 1
        self.points_read += self.points_per_poll
        self.last_poll_at = now
        self._check_heartbeat(now)
        records.extend(self.pipe.recognize_poll(signals, now, signals))
        self.last_poll_ms = (time.perf_counter() - t0) * 1000
        return records

    def _split(self, refused: ReadBlock) -> bool:
        """Replace a bridged block the device refused by its gap-free pieces.

        False when ``refused`` has no gap: then 0x02 is about a mapped
        address and stays a device error.
        """
        pieces = split_at_gaps(refused, self.device.spans())
        if len(pieces) == 1:
            return False
        bi = self.blocks.index(refused)
        self.blocks[bi:bi + 1] = pieces
        self._last[bi:bi + 1] = [None] * len(pieces)
        self._bad_response[bi:bi + 1] = [None] * len(pieces)
        self._hb_at = _slot_of(self.blocks, self._heartbeat)
        log.warning("modbus_read_split", device=self.device.id, table=refused.table,
                    refused=f"{refused.address}..{refused.address + refused.count - 1}",
                    reads=[f"{p.address}..{p.address + p.count - 1}" for p in pieces],
                    reason="0x02 ILLEGAL DATA ADDRESS: the device refuses reads over unmapped "
                           "addresses",
                    action="reading the mapped ranges one by one from now on")
        return True

    def _dead_letter(self, block: ReadBlock, index: int | None, err: IngestError,
                     raw: Any) -> Record:
        if isinstance(raw, bytes):
            payload = raw
        else:
            payload = json.dumps(list(raw)[: block.count], default=str).encode()
        context: dict[str, Any] = {"table": block.table, "host": self.device.host,
                                   "port": self.device.port, "unit_id": self.device.unit_id}
        if index is None:
            context.update(address=block.address, count=block.count)
        else:
            p = block.points[index]
            context.update(point=p.name, address=p.address, type=p.type, order=p.order,
                           registers=[int.from_bytes(payload[j:j + 2], "big")
                                      for j in range(0, len(payload), 2)])
        return self.pipe.dead_letter(err, payload, context)

    def _describe_poll(self, signals: Sequence[Signal]) -> tuple[bytes, Mapping[str, Any]]:
        """A poll whose recognition failed, as its dead letter keeps it."""
        payload = json.dumps({s.point: s.value for s in signals}, default=str).encode()
        return payload, {"poll": self.polls}

    def _check_heartbeat(self, now: float) -> None:
        name = self._heartbeat
        timeout = self.device.heartbeat_timeout
        if name is None or self._hb_at is None or timeout <= 0:
            return
        last = self._last[self._hb_at[0]]
        value = None if last is None else last[self._hb_at[1]]
        if value != self._hb_value or self._hb_changed_at is None:
            self._hb_value, self._hb_changed_at = value, now
            if self.heartbeat_stale:
                self.heartbeat_stale = False
                log.info("heartbeat_resumed", device=self.device.id, point=name)
        elif not self.heartbeat_stale and now - self._hb_changed_at >= timeout:
            self.heartbeat_stale = True
            log.warning("heartbeat_stale", device=self.device.id, point=name, value=value,
                        stale_s=round(now - self._hb_changed_at, 1))

    def _point_values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for bi, block in enumerate(self.blocks):
            last = self._last[bi]
            if last is None:
                continue
            for name, v in zip(block.names, last, strict=True):
                if not name.startswith("tracking["):
                    out[name] = None if isinstance(v, BadValue) else v
        return out


def _slot_of(blocks: Sequence[ReadBlock], name: str | None) -> tuple[int, int] | None:
    """(block index, point index) of point ``name`` in a read plan."""
    return next(((bi, b.names.index(name)) for bi, b in enumerate(blocks) if name in b.names),
                None)
