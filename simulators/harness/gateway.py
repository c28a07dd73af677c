"""Run the real gateway as a child process (for end-to-end tests and benchmarks).

:class:`GatewaySetup` describes a test site and renders the gateway config
for it; :class:`GatewayProcess` writes that config, starts ``python -m
gateway run``, waits for ``/readyz``, reads ``/api/status``, measures RSS from
``/proc`` and can stop it with SIGTERM or kill it with SIGKILL, exactly as an
operator or a power cut would.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from simulators.broker import free_port
from simulators.harness.process import ChildProcess, python_module
from simulators.harness.toml import render_toml

__all__ = ["GatewayProcess", "GatewaySetup"]


@dataclass
class GatewaySetup:
    """What a generated gateway config points at: a test site."""

    workdir: Path
    broker_port: int
    wms_url: str | None = None
    scanners: int = 4
    site: str = "DC-EAST-1"
    topic_prefix: str = "site/DC-EAST-1/scanners"
    max_bytes: str = "1 GiB"
    synchronous: str = "FULL"
    token_file: Path | None = None
    batch_max: int = 1000
    http_extra: dict[str, Any] = field(default_factory=dict)
    mqtt_sink: bool = False
    #: Port of a second broker ("out") for the MQTT sink; None: the site broker.
    mqtt_sink_port: int | None = None
    #: More keys of each scanner's ``[[devices]]`` table.
    device_extra: dict[str, Any] = field(default_factory=dict)
    store_extra: dict[str, Any] = field(default_factory=dict)
    broker_extra: dict[str, Any] = field(default_factory=dict)
    status_port: int = 0
    #: More keys of the ``[status]`` table (``host``, ``token_file``).
    status_extra: dict[str, Any] = field(default_factory=dict)
    #: More ``[[devices]]`` tables (other drivers, e.g. Modbus), after the scanners.
    devices: list[dict[str, Any]] = field(default_factory=list)
    #: More keys of the ``[site]`` table (``codes``).
    site_extra: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The config as data; picks a free status port on first use."""
        brokers: list[dict[str, Any]] = [
            {"id": "site", "port": self.broker_port, **self.broker_extra}
        ]
        devices: list[dict[str, Any]] = [
            {
                "id": f"scan-{i:02d}",
                "driver": "mqtt",
                "broker": "site",
                "topic": f"{self.topic_prefix}/scan-{i:02d}/reads",
                **self.device_extra,
            }
            for i in range(1, self.scanners + 1)
        ]
        devices += self.devices
        sinks: list[dict[str, Any]] = []
        if self.wms_url is not None:
            sinks.append(
                {
                    "id": "wms",
                    "type": "http",
                    "url": self.wms_url,
                    "batch_max": self.batch_max,
                    "backoff_initial": 0.05,
                    "backoff_max": 1.0,
                    "token_file": self.token_file,
                    **self.http_extra,
                }
            )
        if self.mqtt_sink:
            sink_broker = "site"
            if self.mqtt_sink_port is not None:
                brokers.append({"id": "out", "port": self.mqtt_sink_port})
                sink_broker = "out"
            sinks.append({"id": "mqtt-out", "type": "mqtt", "broker": sink_broker})
        self.status_port = self.status_port or free_port()
        return {
            "site": {"id": self.site, **self.site_extra},
            "store": {
                "path": self.workdir / "buffer.db",
                "max_bytes": self.max_bytes,
                "synchronous": self.synchronous,
                **self.store_extra,
            },
            "brokers": brokers,
            # None leaves a table out, as a hand-written config would.
            "devices": devices or None,
            "sinks": sinks or None,
            "status": {"port": self.status_port, **self.status_extra},
            "log": {"format": "json"},
        }

    def render(self) -> str:
        """The TOML text."""
        return render_toml(self.document())


class GatewayProcess(ChildProcess):
    """The gateway daemon as a child process."""

    def __init__(self, config: GatewaySetup, *, name: str = "gateway") -> None:
        self.config = config
        self.workdir = config.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}.toml"
        super().__init__(
            name,
            python_module("gateway", "run", "--config", str(self.config_path)),
            self.workdir / f"{name}.log",
        )

    @property
    def status_url(self) -> str:
        """Base URL of the status API."""
        return f"http://127.0.0.1:{self.config.status_port}"

    def start(self, *, wait_ready: bool = True, timeout: float = 20.0) -> None:
        """Write the config, start the daemon (appending to its log) and wait until ready."""
        self.config_path.write_text(self.config.render(), encoding="utf-8")
        super().start()
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``/readyz`` until 200; raise with the log tail if the process died."""

        def ready() -> bool:
            try:
                with urllib.request.urlopen(self.status_url + "/readyz", timeout=1) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self.wait_until(ready, timeout, "/readyz answering 200")

    def status(self) -> dict[str, Any]:
        """``/api/status`` as a dict."""
        with urllib.request.urlopen(self.status_url + "/api/status", timeout=5) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def metrics(self) -> str:
        """``/metrics`` text."""
        with urllib.request.urlopen(self.status_url + "/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text

    def stop(
        self,
        timeout: float = 20.0,
        *,
        raise_on_kill: bool = True,
        sig: signal.Signals = signal.SIGTERM,
    ) -> int:
        """SIGTERM and wait; returns the exit code.

        A daemon that does not stop within ``timeout`` is killed and
        :class:`subprocess.TimeoutExpired` raised: a slow shutdown is a bug.
        """
        return super().stop(timeout, raise_on_kill=raise_on_kill, sig=sig)

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(10)
