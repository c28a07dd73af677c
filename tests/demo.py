"""``warehouse-gateway demo`` as a child process, with what its "try this" block says.

The tests that drive the demo (its own test, the browser tests) start it with
``DemoProcess``, wait for the block and read every URL, the status token and
the config path from it, as an operator reading the terminal would.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from waiting import wait_until_sync

from simulators.broker import free_port
from simulators.harness.process import ChildProcess, python_module

__all__ = ["DemoProcess", "get_json", "post_json"]


def get_json(url: str) -> Any:
    """``GET url`` as JSON."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def post_json(url: str, body: dict[str, Any]) -> Any:
    """``POST url`` with a JSON body; the JSON answer."""
    req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


class DemoProcess(ChildProcess):
    """The demo with its output in ``workdir/demo.out`` (JSON log lines among the text)."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.status_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.out = workdir / "demo.out"
        super().__init__("demo", python_module(
            "gateway", "demo", "--status-port", str(self.status_port), "--data-dir",
            str(workdir / "data"), *args), self.out)
        self.wms_control = self.site_control = self.token = ""
        self.config = Path()

    @property
    def status_url(self) -> str:
        """Base URL of the status page."""
        return f"http://127.0.0.1:{self.status_port}"

    def start(self, timeout: float = 90.0) -> None:
        """Start and wait for the "try this" block; read its URLs and token."""
        super().start()

        def block() -> dict[str, str] | None:
            text = self.log_text()
            found = {
                "wms": re.search(r"stats: (http://127\.0\.0\.1:\d+)/stats", text),
                "site": re.search(r"site control +(http://127\.0\.0\.1:\d+)/state", text),
                "token": re.search(r"^  status token {2,}(\S+)", text, re.M),
                "config": re.search(r"warehouse-gateway status --config (\S+)", text),
            }
            if not self.running:
                raise AssertionError(f"the demo exited: {self.log_tail()}")
            return {k: m.group(1) for k, m in found.items() if m} if all(
                found.values()) else None

        got = wait_until_sync(block, timeout, "the demo's try-this block", 0.3)
        self.wms_control, self.site_control = got["wms"], got["site"]
        self.token, self.config = got["token"], Path(got["config"])

    def status(self) -> dict[str, Any]:
        """``/api/status``."""
        result: dict[str, Any] = get_json(self.status_url + "/api/status")
        return result

    def wms_events(self) -> list[dict[str, Any]]:
        """Every event the WMS simulator accepted."""
        return [r["event"] for r in get_json(f"{self.wms_control}/events?limit=100000")["events"]]

    def fault(self, name: str, **body: Any) -> Any:
        """Inject one of the site's faults."""
        return post_json(f"{self.site_control}/faults/{name}", body)

    def wms(self, what: str, body: dict[str, Any]) -> Any:
        """``POST`` to the WMS simulator's control API (``outage``, ``faults``)."""
        return post_json(f"{self.wms_control}/control/{what}", body)
