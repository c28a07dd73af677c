"""Run the real gateway as a child process (for end-to-end tests and benchmarks).

``GatewayProcess`` writes a config, starts ``python -m gateway run``, waits for
``/readyz``, reads ``/api/status``, measures RSS from ``/proc`` and can stop it
with SIGTERM or kill it with SIGKILL, exactly as an operator or a power cut
would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.broker import free_port


@dataclass
class SiteConfig:
    """What a generated gateway config points at."""

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
    device_extra: dict[str, Any] = field(default_factory=dict)
    store_extra: dict[str, Any] = field(default_factory=dict)
    broker_extra: dict[str, Any] = field(default_factory=dict)
    status_port: int = 0
    #: More keys of the ``[status]`` table (``host``, ``token_file``).
    status_extra: dict[str, Any] = field(default_factory=dict)
    #: TOML appended verbatim (device tables of other drivers, e.g. Modbus).
    extra_toml: str = ""

    def render(self) -> str:
        """The TOML text."""

        def val(v: Any) -> str:
            return json.dumps(str(v)) if isinstance(v, Path) else json.dumps(v)

        lines = [
            "[site]",
            f'id = "{self.site}"',
            "",
            "[store]",
            f"path = {val(self.workdir / 'buffer.db')}",
            f'max_bytes = "{self.max_bytes}"',
            f'synchronous = "{self.synchronous}"',
        ]
        lines += [f"{k} = {val(v)}" for k, v in self.store_extra.items()]
        lines += ["", "[[brokers]]", 'id = "site"', f"port = {self.broker_port}"]
        lines += [f"{k} = {val(v)}" for k, v in self.broker_extra.items()]
        for i in range(1, self.scanners + 1):
            lines += [
                "",
                "[[devices]]",
                f'id = "scan-{i:02d}"',
                'driver = "mqtt"',
                'broker = "site"',
                f'topic = "{self.topic_prefix}/scan-{i:02d}/reads"',
            ]
            lines += [f"{k} = {val(v)}" for k, v in self.device_extra.items()]
        if self.wms_url is not None:
            lines += [
                "",
                "[[sinks]]",
                'id = "wms"',
                'type = "http"',
                f'url = "{self.wms_url}"',
            ]
            http: dict[str, Any] = {
                "batch_max": self.batch_max,
                "backoff_initial": 0.05,
                "backoff_max": 1.0,
            }
            if self.token_file is not None:
                http["token_file"] = self.token_file
            http.update(self.http_extra)
            lines += [f"{k} = {val(v)}" for k, v in http.items()]
        if self.mqtt_sink:
            sink_broker = "site"
            if self.mqtt_sink_port is not None:
                lines += ["", "[[brokers]]", 'id = "out"', f"port = {self.mqtt_sink_port}"]
                sink_broker = "out"
            lines += [
                "",
                "[[sinks]]",
                'id = "mqtt-out"',
                'type = "mqtt"',
                f'broker = "{sink_broker}"',
            ]
        if self.extra_toml:
            lines += ["", self.extra_toml.strip()]
        port = self.status_port or free_port()
        self.status_port = port
        lines += ["", "[status]", f"port = {port}"]
        lines += [f"{k} = {val(v)}" for k, v in self.status_extra.items()]
        lines += ["", "[log]", 'format = "json"']
        return "\n".join(lines) + "\n"


class GatewayProcess:
    """The gateway daemon as a child process."""

    def __init__(self, config: SiteConfig, *, name: str = "gateway") -> None:
        self.config = config
        self.workdir = config.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}.toml"
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def status_url(self) -> str:
        """Base URL of the status API."""
        return f"http://127.0.0.1:{self.config.status_port}"

    def start(self, *, wait_ready: bool = True, timeout: float = 20.0) -> None:
        """Start the daemon (appending to its log) and wait until ready."""
        self.config_path.write_text(self.config.render(), encoding="utf-8")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
            )
        self.starts += 1
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``/readyz`` until 200; raise with the log tail if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.status_url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.log_tail()}")

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

    def rss_bytes(self) -> int:
        """Resident memory of the daemon, from /proc."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def kill(self) -> None:
        """SIGKILL, as a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return self.proc.returncode

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the daemon's log."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """Structured log lines whose ``event`` is ``event``."""
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if doc.get("event") == event:
                    out.append(doc)
        return out

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(10)
