"""The WMS simulator in a process of its own (the gateway's peer on the other core).

Benchmarks use it so that the simulator's work does not share the gateway's
interpreter; tests that need no second process use :class:`WmsSimulator`
in process.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from simulators.harness.process import ChildProcess, python_module

__all__ = ["WmsProcess"]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class WmsProcess(ChildProcess):
    """``python -m simulators wms`` as a child process, read over its control API."""

    def __init__(
        self, port: int, control_port: int, keep_events: int, log_path: Path | None = None
    ) -> None:
        self.port, self.control_port, self.keep = port, control_port, keep_events
        super().__init__(
            "wms simulator",
            python_module(
                "simulators", "wms", "--port", str(port), "--control-port", str(control_port),
                "--keep-events", str(keep_events),
            ),
            log_path,
        )

    def start(self, timeout: float = 15.0) -> None:
        """Start the simulator and wait until its control API answers."""
        super().start()

        def answers() -> bool:
            try:
                self.stats()
            except OSError:
                return False
            return True

        self.wait_until(answers, timeout, "control API answering")

    def stats(self) -> dict[str, Any]:
        """The simulator's ``/stats``."""
        result: dict[str, Any] = _get(f"http://127.0.0.1:{self.control_port}/stats")
        return result

    def events(self) -> list[dict[str, Any]]:
        """Every accepted event record, paged from ``/events``."""
        out: list[dict[str, Any]] = []
        while True:
            page = _get(
                f"http://127.0.0.1:{self.control_port}/events?after={len(out)}&limit=10000"
            )
            if not page["events"]:
                return out
            out.extend(page["events"])

    @property
    def url(self) -> str:
        """The ingest URL."""
        return f"http://127.0.0.1:{self.port}/api/events"

    def __enter__(self) -> WmsProcess:
        return self
