"""Conveyor PLCs: Modbus TCP servers in front of simulated conveyor lines.

Each of ``count`` conveyors (``conveyor-01`` ...) is a ``ConveyorPlc`` (see
``simulators/conveyor_plc.py`` for the model and register map) served by its
own pymodbus server on its own port (``port``, ``port + 1``, ...; port 0
picks free ports), unit id 1, using pymodbus' 0-based ``SimData``/``SimDevice``
datastore. A device action copies the PLC's register image into the
datastore on every request, applies writes of holding registers to the PLC,
and injects what a test asks for: exception responses, slow answers, raw
register overrides.

A small HTTP control API on loopback (``docs/simulators.md``) jams and
clears zones, restarts a PLC warm (connections dropped, memory kept) or cold
(new boot), freezes the lines, injects faults and returns what each PLC
recorded (its tracking log and faults) for comparison with the gateway's
events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Final

import structlog
from aiohttp import web
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.control_http import json_body, serve_app
from simulators.conveyor_plc import (
    HOLDING_SIZE,
    INPUT_SIZE,
    RING_ADDRESS,
    ConveyorPlc,
)

__all__ = ["ConveyorSimulator", "SimulatedConveyor", "add_arguments", "run"]

log = structlog.get_logger(__name__)

#: Bound on stopping (servers, scan loop, restarts): a stuck stop fails fast and says what.
STOP_TIMEOUT_S: Final = 10.0

_FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 3: "holding", 6: "holding",
             16: "holding", 22: "holding", 23: "holding", 4: "input"}
_TABLES = ("coil", "discrete_input", "holding", "input")


@dataclass(slots=True)
class _Injection:
    """Answer requests with an exception code, or late (``count`` -1: until changed)."""

    code: int = 0
    delay_s: float = 0.0
    count: int = 0
    function: int | None = None

    def applies(self, fc: int) -> bool:
        return self.count != 0 and (self.function is None or self.function == fc)

    def use(self) -> None:
        if self.count > 0:
            self.count -= 1


def _datastore() -> SimDevice:
    # Non-shared tables: coils and discrete inputs are bit-addressed, as on a PLC.
    return SimDevice(id=1, simdata=(
        [SimData(0, count=16, values=False, datatype=DataType.BITS, readonly=True)],
        [SimData(0, count=32, values=False, datatype=DataType.BITS)],
        [SimData(0, count=HOLDING_SIZE, values=0, datatype=DataType.REGISTERS)],
        [SimData(0, count=32, values=0, datatype=DataType.REGISTERS),
         SimData(RING_ADDRESS, count=INPUT_SIZE - RING_ADDRESS, values=0,
                 datatype=DataType.REGISTERS)],
    ))


class SimulatedConveyor:
    """One PLC and the Modbus server answering for it."""

    def __init__(self, plc: ConveyorPlc, host: str, port: int) -> None:
        self.plc = plc
        self.host = host
        self.port = port
        self.id = f"conveyor-{plc.number:02d}"
        self.exception = _Injection()
        self.slow = _Injection()
        self.overrides: dict[tuple[str, int], int] = {}
        self.requests = 0
        self.restarting = False
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen (on the same port again after a restart)."""
        device = _datastore()
        device.action = self._action
        server = ModbusTcpServer(device, address=(self.host, self.port))
        await server.serve_forever(background=True)
        sockets = server.transport.sockets if server.transport else ()  # type: ignore[attr-defined]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._server = server

    async def stop(self) -> None:
        """Close the listener and drop every connection."""
        if self._server is not None:
            server, self._server = self._server, None
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await server.shutdown()  # type: ignore[no-untyped-call]
            except TimeoutError:
                raise RuntimeError(f"{self.id}: the Modbus server on port {self.port} did not "
                                   f"shut down within {STOP_TIMEOUT_S:g}s") from None

    async def restart(self, mode: str = "warm", down_s: float = 1.0) -> None:
        """Drop connections, stay away ``down_s``, come back (``cold``: as a new boot)."""
        if mode not in ("warm", "cold"):
            raise ValueError("mode must be 'warm' or 'cold'")
        self.restarting = True
        await self.stop()
        log.info("conveyor_restarting", device=self.id, mode=mode, down_s=down_s)
        try:
            await asyncio.sleep(down_s)
            if mode == "cold":
                self.plc.cold_restart()
            await self.start()
        finally:
            self.restarting = False
        log.info("conveyor_restarted", device=self.id, mode=mode, boot=self.plc.boot)

    async def _action(self, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None
                      ) -> ExcCodes | None:
        self.requests += 1
        if self.slow.applies(fc):
            self.slow.use()
            await asyncio.sleep(self.slow.delay_s)
        if self.exception.applies(fc):
            self.exception.use()
            return ExcCodes(self.exception.code)
        table = _FC_TABLE[fc]
        if values is not None:
            if table == "holding":
                for i, v in enumerate(values):
                    self.plc.write_holding(address + i, int(v))
            return None
        image = self.plc.image(table)
        registers[: len(image)] = image
        if table == "input" and address + count > RING_ADDRESS:
            self.plc.ring_read()
        for (t, addr), v in self.overrides.items():
            if t == table and 0 <= addr - start < len(registers):
                registers[addr - start] = v
        return None


class ConveyorSimulator:
    """``count`` conveyors and the control API; an async context manager."""

    def __init__(self, *, count: int = 1, host: str = "127.0.0.1", port: int = 0,
                 control_port: int | None = 0, zones: int = 6, seed: int = 1,
                 tote_rate: float = 1.0, noread_rate: float = 0.02, jam_rate: float = 0.0,
                 jam_clear_s: float = 5.0, counter_start: int = 0, tick_s: float = 0.05) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self.host = host
        self.tick_s = tick_s
        self.control_port = control_port
        self.conveyors = [
            SimulatedConveyor(
                ConveyorPlc(n, zones=zones, seed=seed, tote_rate=tote_rate,
                            noread_rate=noread_rate, jam_rate=jam_rate, jam_clear_s=jam_clear_s,
                            counter_start=counter_start),
                host, port + n - 1 if port else 0)
            for n in range(1, count + 1)
        ]
        self._ticker: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def control_url(self) -> str:
        """Base URL of the control API."""
        return f"http://{self.host}:{self.control_port}"

    def __getitem__(self, number: int) -> SimulatedConveyor:
        """Conveyor ``number`` (1-based, as in ``conveyor-01``)."""
        if not 1 <= number <= len(self.conveyors):
            raise KeyError(f"no conveyor {number} (1..{len(self.conveyors)})")
        return self.conveyors[number - 1]

    async def start(self) -> None:
        """Start every server, the PLC scan loop and the control API."""
        for conv in self.conveyors:
            await conv.start()
        self._ticker = asyncio.create_task(self._tick(), name="conveyor-scan")
        if self.control_port is not None:
            app = web.Application()
            app.router.add_get("/state", self._h_state)
            app.router.add_get("/devices/{n}/tracking", self._h_tracking)
            app.router.add_get("/devices/{n}/faults", self._h_faults)
            app.router.add_post("/devices/{n}/{command}", self._h_command)
            app.router.add_post("/freeze", self._h_freeze)
            self._runner, self.control_port = await serve_app(app, self.host,
                                                              self.control_port)
        log.info("conveyor_simulator_ready", devices=len(self.conveyors),
                 ports=[c.port for c in self.conveyors], control=self.control_url
                 if self.control_port is not None else None)

    async def stop(self) -> None:
        """Stop the scan loop, the servers and the control API."""
        tasks = {t for t in [self._ticker, *self._tasks] if t is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            done, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            if stuck:
                raise RuntimeError("conveyor simulator: tasks did not stop within "
                                   f"{STOP_TIMEOUT_S:g}s of being cancelled: "
                                   f"{sorted(t.get_name() for t in stuck)}")
            for task in done:  # a task that failed instead of stopping: say so
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        for conv in self.conveyors:
            await conv.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ConveyorSimulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            dt, last = min(now - last, 1.0), now
            for conv in self.conveyors:
                if not conv.restarting:  # a restarting PLC does not scan
                    conv.plc.tick(dt)

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or resume) every line: no moves, counts or faults; the heartbeat runs."""
        for conv in self.conveyors:
            conv.plc.frozen = frozen

    def restart_later(self, number: int, mode: str, down_s: float) -> dict[str, Any]:
        """Start a restart in the background (the control API answers at once)."""
        if mode not in ("warm", "cold"):
            raise ValueError("mode must be 'warm' or 'cold'")
        task = asyncio.create_task(self[number].restart(mode, down_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"restarting": self[number].id, "mode": mode, "down_s": down_s}

    # -- control API -----------------------------------------------------------------

    async def _h_state(self, request: web.Request) -> web.Response:
        return web.json_response({"devices": [
            {"id": c.id, "port": c.port, "requests": c.requests, **c.plc.state_dict()}
            for c in self.conveyors]})

    def _conveyor(self, request: web.Request) -> SimulatedConveyor:
        try:
            return self[int(request.match_info["n"])]
        except (KeyError, ValueError):
            raise web.HTTPNotFound(text=f"no conveyor {request.match_info['n']!r}") from None

    async def _h_tracking(self, request: web.Request) -> web.Response:
        conv = self._conveyor(request)
        return web.json_response({"moves": [asdict(m) for m in conv.plc.moves]})

    async def _h_faults(self, request: web.Request) -> web.Response:
        conv = self._conveyor(request)
        return web.json_response({"faults": [asdict(f) for f in conv.plc.faults]})

    async def _h_freeze(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        self.freeze(bool(body.get("frozen", True)))
        return web.json_response({"frozen": bool(body.get("frozen", True))})

    async def _h_command(self, request: web.Request) -> web.Response:
        conv = self._conveyor(request)
        body = await json_body(request)
        command = request.match_info["command"]
        handler = _COMMANDS.get(command)
        if handler is None:
            raise web.HTTPNotFound(text=f"unknown command {command!r}; expected one of "
                                        f"{', '.join(sorted(_COMMANDS))}")
        try:
            result = handler(self, conv, body)
        except (KeyError, TypeError, ValueError) as err:
            raise web.HTTPBadRequest(text=f"{command}: {err}") from None
        if isinstance(result, Awaitable):
            result = await result
        return web.json_response(result)


def _override(conv: SimulatedConveyor, body: dict[str, Any]) -> dict[str, Any]:
    if body.get("clear"):
        conv.overrides.clear()
        return {"overrides": 0}
    table, address = body["table"], int(body["address"])
    if table not in _TABLES:
        raise ValueError(f"table must be one of {', '.join(_TABLES)}")
    for i, v in enumerate(body["values"]):
        if not 0 <= int(v) <= 0xFFFF:
            raise ValueError("register values are 0..65535")
        conv.overrides[(table, address + i)] = int(v)
    return {"overrides": len(conv.overrides)}


def _exception(conv: SimulatedConveyor, body: dict[str, Any]) -> dict[str, Any]:
    code = int(body["code"])
    if code and code not in {c.value for c in ExcCodes}:
        raise ValueError(f"code must be one of {sorted(c.value for c in ExcCodes)} (0: off)")
    fc = body.get("function")
    conv.exception = _Injection(code=code, count=int(body.get("count", -1)) if code else 0,
                                function=None if fc is None else int(fc))
    return {"exception": asdict(conv.exception)}


def _slow(conv: SimulatedConveyor, body: dict[str, Any]) -> dict[str, Any]:
    delay = float(body["seconds"])
    conv.slow = _Injection(delay_s=delay, count=int(body.get("count", -1)) if delay else 0)
    return {"slow": asdict(conv.slow)}


_Command = Callable[[ConveyorSimulator, SimulatedConveyor, dict[str, Any]], Any]
_COMMANDS: dict[str, _Command] = {
    "jam": lambda sim, c, b: {"raised": c.plc.jam(int(b.get("zone", 1)),
                                                  int(b.get("code", 101))),
                              "fault_count": c.plc.fault_count},
    "clear": lambda sim, c, b: {"cleared": c.plc.clear(), "fault_count": c.plc.fault_count},
    "restart": lambda sim, c, b: sim.restart_later(c.plc.number, str(b.get("mode", "warm")),
                                                   float(b.get("down_s", 1.0))),
    "exception": lambda sim, c, b: _exception(c, b),
    "slow": lambda sim, c, b: _slow(c, b),
    "override": lambda sim, c, b: _override(c, b),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``conveyor`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020,
                        help="port of conveyor-01; conveyor-N listens on port + N - 1 "
                             "(0: free ports)")
    parser.add_argument("--count", type=int, default=1, help="number of conveyors")
    parser.add_argument("--control-port", type=int, default=None,
                        help="control API port (default: after the last conveyor; "
                             "0: a free port)")
    parser.add_argument("--zones", type=int, default=6, help="zones per conveyor (1..16)")
    parser.add_argument("--tote-rate", type=float, default=1.0,
                        help="totes inducted per second per conveyor")
    parser.add_argument("--noread-rate", type=float, default=0.02,
                        help="fraction of totes the exit scanner cannot read")
    parser.add_argument("--jam-rate", type=float, default=0.0,
                        help="random jams per second per conveyor")
    parser.add_argument("--jam-clear", type=float, default=5.0,
                        help="seconds until a random jam clears itself (0: never)")
    parser.add_argument("--counter-start", type=int, default=0,
                        help="first value of the 32-bit counters (e.g. 4294967000 to see a wrap)")
    parser.add_argument("--tick", type=float, default=0.05, help="PLC scan time in seconds")
    parser.add_argument("--seed", type=int, default=1)


async def _serve(args: argparse.Namespace) -> None:
    control = args.control_port
    if control is None:
        control = args.port + args.count if args.port else 0
    sim = ConveyorSimulator(
        count=args.count, host=args.host, port=args.port, control_port=control,
        zones=args.zones, seed=args.seed, tote_rate=args.tote_rate,
        noread_rate=args.noread_rate, jam_rate=args.jam_rate, jam_clear_s=args.jam_clear,
        counter_start=args.counter_start, tick_s=args.tick)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        ports = [c.port for c in sim.conveyors]
        print(json.dumps({"event": "conveyor_simulator_listening", "host": args.host,  # noqa: T201
                          "ports": ports, "control": sim.control_url,
                          "time": time.time()}), flush=True)
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    """Run the ``conveyor`` sub-command until SIGINT/SIGTERM; return the exit code."""
    if args.count < 1 or not 1 <= args.zones <= 16:
        print("conveyor: --count must be >= 1 and --zones 1..16")  # noqa: T201
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0
