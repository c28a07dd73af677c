"""The vendor simulators as child processes (for end-to-end tests, benchmarks and docs checks).

Each runs ``python -m simulators vendor-...`` with a state folder of its own
under ``workdir`` (so a restart continues its sequences), waits until it
listens (or, for the scanner, until it is connected) and reads its ledger:
what the device says it did, to compare with the events the gateway made.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client

from simulators.broker import free_port
from simulators.harness.process import ChildProcess, python_module
from simulators.vendor.ledger import read_ledger
from simulators.vendor.sorter import FIRE_CONFIRMS, SIMULATION

__all__ = ["VendorPlcProcess", "VendorScannerProcess", "VendorSorterProcess", "fire_confirms"]


class _VendorProcess(ChildProcess):
    """A vendor simulator with its state folder and ledger."""

    command = ""

    def __init__(self, workdir: Path, extra: list[str] | None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = workdir / "state"
        self.extra = list(extra or [])
        super().__init__(self.command, python_module("simulators", self.command, *self.args()),
                         workdir / f"{self.command}.log")

    @property
    def ledger_path(self) -> Path:
        """The device's ledger file."""
        return self.state_dir / "ledger.jsonl"

    def args(self) -> list[str]:
        """The command line options."""
        return ["--state", str(self.state_dir), *self.extra]

    def start(self) -> None:
        """Start (again) with the current options."""
        self.argv = python_module("simulators", self.command, *self.args())
        super().start()

    def ledger(self, kind: str | None = None) -> list[dict[str, Any]]:
        """What the device recorded (entries of one ``kind``), oldest first."""
        return read_ledger(self.ledger_path, kind)


class VendorSorterProcess(_VendorProcess):
    """``python -m simulators vendor-sorter``: OPC UA, custom event type, integer codes."""

    command = "vendor-sorter"

    def __init__(self, workdir: Path, *, port: int | None = None, rate: float = 10.0,
                 total: int | None = None, history: bool = False, seed: int = 1,
                 extra: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.rate, self.total, self.history, self.seed = rate, total, history, seed
        super().__init__(workdir, extra)

    @property
    def endpoint(self) -> str:
        """The server's endpoint URL."""
        return f"opc.tcp://127.0.0.1:{self.port}/"

    def args(self) -> list[str]:
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--rate", str(self.rate),
                "--seed", str(self.seed), "--history" if self.history else "--no-history"]
        if self.total is not None:
            args += ["--total", str(self.total)]
        return args + super().args()

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the port accepts connections."""
        super().start()
        self.wait_listening(self.port, timeout)


async def fire_confirms(endpoint: str, count: int, result_code: int = -1) -> int:
    """Make the vendor sorter fire ``count`` confirms now; return its next SeqNo.

    ``result_code`` forces the result (``-1``: drawn at the simulator's rates).
    """
    async with Client(endpoint, timeout=10) as client:
        result = await client.get_node(SIMULATION).call_method(
            ua.NodeId.from_string(FIRE_CONFIRMS), ua.Variant(count, ua.VariantType.UInt32),
            ua.Variant(result_code, ua.VariantType.Int32))
    return int(result)


class VendorPlcProcess(_VendorProcess):
    """``python -m simulators vendor-plc``: Modbus TCP, a vendor's map, a control API."""

    command = "vendor-plc"

    def __init__(self, workdir: Path, *, port: int | None = None,
                 control_port: int | None = None, counter_start: int = 0,
                 item_rate: float = 0.0, track_rate: float = 0.0, fault_every: float = 0.0,
                 extra: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.control_port = control_port or free_port()
        self.counter_start = counter_start
        self.item_rate, self.track_rate, self.fault_every = item_rate, track_rate, fault_every
        super().__init__(workdir, extra)

    @property
    def control_url(self) -> str:
        """Base URL of the control API."""
        return f"http://127.0.0.1:{self.control_port}"

    def args(self) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(self.port),
                "--control-port", str(self.control_port),
                "--counter-start", str(self.counter_start), "--item-rate", str(self.item_rate),
                "--track-rate", str(self.track_rate), "--fault-every", str(self.fault_every),
                *super().args()]

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until both listeners accept connections."""
        super().start()
        self.wait_listening(self.port, timeout)
        self.wait_listening(self.control_port, timeout)

    def control(self, command: str, body: dict[str, Any] | None = None) -> Any:
        """``POST /<command>`` with ``body`` (``GET /state`` for ``"state"``)."""
        get = command == "state"
        req = urllib.request.Request(
            f"{self.control_url}/{command}", method="GET" if get else "POST",
            data=None if get else json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())


class VendorScannerProcess(_VendorProcess):
    """``python -m simulators vendor-scanner``: nested JSON over MQTT."""

    command = "vendor-scanner"

    def __init__(self, workdir: Path, broker_port: int, *, topic: str | None = None,
                 rate: float = 10.0, total: int | None = None, seed: int = 1,
                 extra: list[str] | None = None) -> None:
        self.broker_port = broker_port
        self.topic = topic
        self.rate, self.total, self.seed = rate, total, seed
        super().__init__(workdir, extra)

    def args(self) -> list[str]:
        args = ["--host", "127.0.0.1", "--port", str(self.broker_port), "--rate", str(self.rate),
                "--seed", str(self.seed)]
        if self.topic is not None:
            args += ["--topic", self.topic]
        if self.total is not None:
            args += ["--total", str(self.total)]
        return args + super().args()

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait until it has published ``total`` reads and exited; return the exit code."""
        assert self.proc is not None, "never started"
        return self.proc.wait(timeout)
