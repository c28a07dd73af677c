"""The sorter simulator as a child process (for end-to-end tests and benchmarks).

``SorterProcess`` starts ``python -m simulators sorter`` on a loopback port,
waits until it accepts connections, can kill it with SIGKILL (a power cut)
and start it again with the same ``--state`` folder (retentive memory).
``read_log`` reads what the device recorded, from its state file.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from simulators.broker import free_port
from simulators.harness.process import ChildProcess, python_module

__all__ = ["SorterProcess", "read_log"]


class SorterProcess(ChildProcess):
    """``python -m simulators sorter`` as a child process."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        rate: float = 20.0,
        total: int | None = None,
        seed: int = 1,
        state: bool = True,
        extra: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.rate = rate
        self.total = total
        self.seed = seed
        self.state_dir: Path | None = workdir / "state" if state else None
        self.extra = list(extra or [])
        super().__init__(
            "sorter simulator", python_module("simulators", "sorter", *self.args()),
            workdir / "sorter.log",
        )

    @property
    def endpoint(self) -> str:
        """The server's endpoint URL."""
        return f"opc.tcp://127.0.0.1:{self.port}/"

    def args(self) -> list[str]:
        """The simulator's command line options."""
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--rate", str(self.rate),
                "--seed", str(self.seed)]
        if self.total is not None:
            args += ["--total", str(self.total)]
        if self.state_dir is not None:
            args += ["--state", str(self.state_dir)]
        return args + self.extra

    def start(self, timeout: float = 30.0) -> None:
        """Start the simulator and wait until its port accepts connections."""
        # Options may have changed since construction (a restart with others).
        self.argv = python_module("simulators", "sorter", *self.args())
        super().start()
        self.wait_listening(self.port, timeout)

    def read_log(self) -> list[dict[str, Any]]:
        """Every event the device recorded: ``{"seq", "source", "time_us", **fields}``."""
        return read_log(self.state_dir) if self.state_dir is not None else []

    def read_counters(self) -> dict[str, int]:
        """The device's retentive counters."""
        assert self.state_dir is not None
        with contextlib.closing(sqlite3.connect(self.state_dir / "sorter.db")) as db:
            return {k: int(v) for k, v in db.execute("SELECT name, value FROM counters")}

    def __enter__(self) -> SorterProcess:
        return self


def read_log(state_dir: Path) -> list[dict[str, Any]]:
    """The event log of a simulator's state folder, oldest first."""
    path = state_dir / "sorter.db"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT seq, source, time_us, fields FROM log ORDER BY seq").fetchall()
    return [{"seq": seq, "source": src, "time_us": t, **json.loads(f)} for seq, src, t, f in rows]
