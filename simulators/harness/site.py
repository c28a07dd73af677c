"""The whole simulated site as a child process (for end-to-end tests, benchmarks, the demo).

``SiteProcess`` starts ``python -m simulators site`` on free loopback ports,
waits for its ``site_listening`` line, injects faults over its control API
and renders the gateway ``[[devices]]`` that read it.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from simulators.broker import free_port
from simulators.harness.process import ChildProcess, python_module
from simulators.site.config import SiteLayout, site_devices

__all__ = ["SiteProcess"]


class SiteProcess(ChildProcess):
    """``python -m simulators site`` as a child process.

    Orders are held until :meth:`start_orders` (once the gateway reading the
    site is ready: a scanner read published before the gateway subscribed
    reaches nobody).
    """

    def __init__(self, workdir: Path, broker_port: int, *, layout: SiteLayout | None = None,
                 extra: list[str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.layout = layout or SiteLayout()
        self.broker_port = broker_port
        self.modbus_port, self.opcua_port, self.control_port = free_port(), free_port(), free_port()
        self.ledger = workdir / "ledger.jsonl"
        lay = self.layout
        args = ["--site-id", lay.site, "--broker-port", str(broker_port),
                "--modbus-port", str(self.modbus_port), "--opcua-port", str(self.opcua_port),
                "--control-port", str(self.control_port), "--ledger", str(self.ledger),
                "--state", str(workdir / "state"), "--put-walls", str(lay.put_walls),
                "--pack-stations", str(lay.pack_stations), "--amrs", str(lay.amrs),
                "--docks", str(lay.docks), "--zones", str(lay.zones), "--hold-orders",
                *(extra or [])]
        super().__init__("site simulator", python_module("simulators", "site", *args),
                         workdir / "site.log")

    @property
    def control_url(self) -> str:
        """Base URL of the control API."""
        return f"http://127.0.0.1:{self.control_port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the site and wait until every device listens."""
        super().start()
        self.wait_for_log_event("site_listening", timeout)

    def devices(self, poll_interval: str = "200ms") -> list[dict[str, Any]]:
        """The gateway's ``[[devices]]`` for this site."""
        return site_devices(self.layout, modbus_port=self.modbus_port,
                            opcua_port=self.opcua_port, poll_interval=poll_interval)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.loads(r.read())

    def state(self) -> dict[str, Any]:
        """The site's ``/state``."""
        result: dict[str, Any] = self._call("GET", "/state")
        return result

    def start_orders(self) -> None:
        """Let orders flow."""
        self.fault("start_orders")

    def fault(self, name: str, **body: Any) -> dict[str, Any]:
        """Inject fault ``name`` (``POST /faults/<name>``)."""
        result: dict[str, Any] = self._call("POST", f"/faults/{name}", body)
        return result

    def __enter__(self) -> SiteProcess:
        return self
