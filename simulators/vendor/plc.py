"""Generic vendor PLC: a pymodbus server whose map is not the project's conveyor layout.

The map and the ledger are described in ``simulators/vendor/plc_model.py``
(and docs/simulators.md). The PLC counts items at ``--item-rate``, makes a
tracking update at ``--track-rate`` and raises a fault every ``--fault-every``
seconds for ``--fault-for`` seconds; a small HTTP control API (``--control-port``)
does the same on request, so a test decides exactly what happens:

    GET  /state                                   what the PLC holds now
    POST /items        {"count": 3}               count items
    POST /track        {"container": "C1", "from": 1, "to": 7}
    POST /fault        {"active": true, "code": 17}
    POST /temperature  {"value": 81.5}
    POST /freeze       {"frozen": true}           stop (or resume) the automatic activity

With ``--state DIR`` the counter, the tracking group and the ledger
(``DIR/ledger.jsonl``) survive a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.vendor.ledger import Ledger, RetentiveState
from simulators.vendor.plc_model import RANGES, RESET_COIL, VendorPlcModel

__all__ = ["VendorPlc", "add_arguments", "run"]

log = structlog.get_logger(__name__)

STOP_TIMEOUT_S: Final = 10.0
_FC_TABLE: Final = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 3: "holding",
                    6: "holding", 16: "holding", 22: "holding", 23: "holding", 4: "input"}
_BIT_TABLES: Final = ("coil", "discrete_input")
_TABLE_ORDER: Final = ("coil", "discrete_input", "holding", "input")


def _datastore(unit: int) -> SimDevice:
    blocks: dict[str, list[SimData]] = {t: [] for t in _TABLE_ORDER}
    for table, address, count in RANGES:
        bits = table in _BIT_TABLES
        blocks[table].append(SimData(
            address, count=count, values=False if bits else 0,
            datatype=DataType.BITS if bits else DataType.REGISTERS,
            readonly=table != "coil"))
    return SimDevice(id=unit, simdata=(blocks["coil"], blocks["discrete_input"],
                                       blocks["holding"], blocks["input"]))


class VendorPlc:
    """The PLC model, its Modbus server, its automatic activity and its control API."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, unit: int = 1,
                 control_port: int | None = 0, state_dir: Path | None = None,
                 ledger: Path | None = None, counter_start: int = 0) -> None:
        ledger_path = ledger or (state_dir / "ledger.jsonl" if state_dir else None)
        if ledger_path is None:
            raise ValueError("the vendor PLC needs a state folder or a ledger file")
        self.host, self.port, self.unit = host, port, unit
        self.control_port = control_port
        state = RetentiveState(state_dir / "state.json" if state_dir else None,
                               VendorPlcModel.defaults(counter_start))
        self.model = VendorPlcModel(Ledger(ledger_path), state)
        self.frozen = False
        self.requests = 0
        self._server: ModbusTcpServer | None = None
        self._runner: web.AppRunner | None = None

    @property
    def control_url(self) -> str:
        """Base URL of the control API."""
        return f"http://{self.host}:{self.control_port}"

    async def start(self) -> None:
        """Listen (Modbus and control API)."""
        self.model.boot()
        device = _datastore(self.unit)
        device.action = self._action
        server = ModbusTcpServer(device, address=(self.host, self.port))
        await server.serve_forever(background=True)
        sockets = server.transport.sockets if server.transport else ()  # type: ignore[attr-defined]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._server = server
        if self.control_port is not None:
            app = web.Application()
            app.router.add_get("/state", self._h_state)
            app.router.add_post("/{command}", self._h_command)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await self._runner.setup()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.control_port))
            self.control_port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Close the listeners and the ledger."""
        if self._server is not None:
            server, self._server = self._server, None
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await server.shutdown()  # type: ignore[no-untyped-call]
            except TimeoutError:
                raise RuntimeError(f"vendor PLC: the Modbus server on port {self.port} did not "
                                   f"shut down within {STOP_TIMEOUT_S:g}s") from None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.model.ledger.close()

    async def _action(self, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None
                      ) -> ExcCodes | None:
        self.requests += 1
        table = _FC_TABLE[fc]
        if values is not None:  # only coils are writable (the map marks the rest read-only)
            for i, v in enumerate(values):
                if address + i == RESET_COIL and v:
                    self.model.set_fault(False)
            return None
        image = self.model.image(table)
        if table in _BIT_TABLES:
            words: dict[int, int] = {}
            for bit, on in image.items():
                words[bit // 16] = words.get(bit // 16, 0) | (on << (bit % 16))
            image = words
        for addr, value in image.items():
            i = addr - start
            if 0 <= i < len(registers):
                registers[i] = value
        return None

    async def activity(self, item_rate: float, track_rate: float, fault_every: float,
                       fault_for: float) -> None:
        """The PLC's own activity: items, tracking updates and faults at their rates."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        items = tracks = 0
        fault_until: float | None = None
        next_fault = started + fault_every if fault_every > 0 else None
        while True:
            await asyncio.sleep(0.02)
            now = loop.time()
            if self.frozen:
                continue
            if item_rate > 0 and (due := int((now - started) * item_rate)) > items:
                self.model.add_items(due - items)
                items = due
            if track_rate > 0 and (due := int((now - started) * track_rate)) > tracks:
                for _ in range(due - tracks):
                    self.model.track(from_station=1 + tracks % 2, to_station=5 + tracks // 2 % 2)
                    tracks += 1
            if next_fault is not None and now >= next_fault and not self.model.fault_active:
                self.model.set_fault(True)
                fault_until, next_fault = now + fault_for, now + fault_every
            if fault_until is not None and now >= fault_until:
                self.model.set_fault(False)
                fault_until = None

    # -- control API -----------------------------------------------------------------

    async def _h_state(self, request: web.Request) -> web.Response:
        return web.json_response({"port": self.port, "unit": self.unit, "frozen": self.frozen,
                                  "requests": self.requests, **self.model.state_dict()})

    async def _h_command(self, request: web.Request) -> web.Response:
        command = request.match_info["command"]
        handler = _COMMANDS.get(command)
        if handler is None:
            raise web.HTTPNotFound(text=f"unknown command {command!r}; expected one of "
                                        f"{', '.join(sorted(_COMMANDS))}")
        body: Any = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except json.JSONDecodeError:
                raise web.HTTPBadRequest(text="body must be a JSON object") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        try:
            result = handler(self, body)
        except (KeyError, TypeError, ValueError) as err:
            raise web.HTTPBadRequest(text=f"{command}: {err}") from None
        if isinstance(result, Awaitable):
            result = await result
        return web.json_response(result)


def _freeze(plc: VendorPlc, body: dict[str, Any]) -> dict[str, Any]:
    plc.frozen = bool(body.get("frozen", True))
    return {"frozen": plc.frozen}


_Command = Callable[[VendorPlc, dict[str, Any]], Any]
_COMMANDS: dict[str, _Command] = {
    "items": lambda plc, b: {"increments": plc.model.add_items(int(b.get("count", 1)))},
    "track": lambda plc, b: plc.model.track(b.get("container"), int(b.get("from", 1)),
                                            int(b.get("to", 2))),
    "fault": lambda plc, b: {"changed": plc.model.set_fault(bool(b.get("active", True)),
                                                            int(b.get("code", 17)))},
    "temperature": lambda plc, b: plc.model.set_temperature(float(b["value"])),
    "freeze": _freeze,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vendor-plc`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5021, help="Modbus port (0: a free one)")
    parser.add_argument("--unit", type=int, default=1, help="unit (device) id")
    parser.add_argument("--control-port", type=int, default=0,
                        help="control API port (0: a free one)")
    parser.add_argument("--state", type=Path, default=None,
                        help="folder of the retentive state and the ledger (ledger.jsonl)")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="the ledger file (default: STATE/ledger.jsonl)")
    parser.add_argument("--counter-start", type=int, default=0,
                        help="item counter of a fresh PLC (e.g. 4294967290 to see a wrap)")
    parser.add_argument("--item-rate", type=float, default=2.0, help="items per second (0: none)")
    parser.add_argument("--track-rate", type=float, default=1.0,
                        help="tracking updates per second (0: none)")
    parser.add_argument("--fault-every", type=float, default=0.0,
                        help="raise a fault every N seconds (0: never)")
    parser.add_argument("--fault-for", type=float, default=2.0, help="seconds a fault lasts")


async def _serve(args: argparse.Namespace) -> None:
    plc = VendorPlc(host=args.host, port=args.port, unit=args.unit,
                    control_port=args.control_port, state_dir=args.state, ledger=args.ledger,
                    counter_start=args.counter_start)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await plc.start()
    task = asyncio.create_task(plc.activity(args.item_rate, args.track_rate, args.fault_every,
                                            args.fault_for), name="vendor-plc-activity")
    task.add_done_callback(lambda _: stop.set())  # a failed PLC program stops the process
    log.info("vendor_plc_listening", host=args.host, port=plc.port, unit=plc.unit,
             control=plc.control_url, boot=plc.model.state["boot"], counter=plc.model.counter,
             seq=plc.model.seq, ledger=str(plc.model.ledger.path), time=time.time())
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await plc.stop()
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    log.info("vendor_plc_stopped", counter=plc.model.counter, seq=plc.model.seq)


def run(args: argparse.Namespace) -> int:
    """Run the ``vendor-plc`` sub-command until SIGINT/SIGTERM; return the exit code."""
    if args.state is None and args.ledger is None:
        print("vendor-plc: needs --state DIR or --ledger FILE")  # noqa: T201
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0
