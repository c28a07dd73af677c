"""A private Mosquitto broker process for tests, the demo and benchmarks.

Each ``MosquittoBroker`` owns one ``mosquitto`` process listening on a loopback
port, with its configuration and log in a working directory of its own, so that
tests never depend on (or disturb) a broker that happens to be running.

By default the broker persists its sessions and queued messages to the working
directory every second, as docs/mqtt.md recommends for sites: a ``kill -9`` of
the broker then loses at most the last second of what it acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

__all__ = ["BrokerTls", "MosquittoBroker", "find_mosquitto", "free_port"]

log = structlog.get_logger(__name__)

_DEBIAN_PATH = "/usr/sbin/mosquitto"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_LOG_TAIL_BYTES = 2000
# A port picked by free_port() can be taken by another process before
# mosquitto binds it; retrying with a fresh port hides that race.
_PORT_RETRIES = 3


def find_mosquitto() -> str:
    """Return the path of the ``mosquitto`` executable.

    Raises:
        RuntimeError: when neither ``PATH`` nor Debian's location holds it.
    """
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(_DEBIAN_PATH, os.X_OK):
        return _DEBIAN_PATH
    raise RuntimeError(
        "mosquitto not found: install the Debian package 'mosquitto' (scripts/setup.sh does)"
    )


def _raise_open_files_limit() -> None:
    # Mosquitto needs one descriptor per client; a soft limit of 1024 would
    # stop a fleet of a thousand simulated AMRs. Raise it to the hard limit.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """A TLS listener: the broker's certificate and key, and the CA clients chain to.

    With ``require_certificate`` a client must present a certificate signed by
    ``ca_file`` (mutual TLS).
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    require_certificate: bool = False
    tls_version: str | None = None  # e.g. "tlsv1.3": the only version offered


class MosquittoBroker:
    """One Mosquitto process on a loopback port, configured for gateway work.

    Usable as a (sync or async) context manager::

        with MosquittoBroker(tmp_path) as broker:
            client.connect(broker.host, broker.port)
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        persistence: bool = True,
        autosave_interval: int = 1,
        tls: BrokerTls | None = None,
    ) -> None:
        if autosave_interval < 0:
            raise ValueError(f"autosave_interval must be >= 0 seconds, got {autosave_interval}")
        self._workdir = Path(workdir)
        self._persistence = persistence
        self._autosave_interval = autosave_interval
        self._tls = tls
        self._host = host
        self._port_fixed = port is not None
        self._port = port if port is not None else free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_file: Path = self._workdir / "mosquitto.stderr"
        self.log_file: Path = self._workdir / "mosquitto.log"
        """Mosquitto's own log (errors, warnings, notices)."""
        self.config_file: Path = self._workdir / "mosquitto.conf"
        """The configuration written by :meth:`start`."""
        self.persistence_file: Path = self._workdir / "mosquitto.db"
        """Where the broker saves sessions and queued messages (with persistence)."""

    @property
    def host(self) -> str:
        """The address the broker listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port the broker listens on."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs, else ``None``."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def _write_config(self) -> None:
        lines = [
            f"listener {self._port} {self._host}",
            *self._tls_lines(),
            "allow_anonymous true",
            # With persistence, sessions and their queued messages are saved on
            # stop and every autosave_interval seconds, and restored on start.
            # Mosquitto's default interval (1800 s) lets a crash lose half an
            # hour of acknowledged QoS 1 messages; 1 s bounds it to a second.
            *(
                ["persistence true", f"persistence_location {self._workdir}/",
                 "autosave_on_changes false", f"autosave_interval {self._autosave_interval}"]
                if self._persistence
                else ["persistence false"]
            ),
            "max_inflight_messages 1000",
            # Unlimited: gateways use persistent sessions and the broker must
            # hold their backlog while they are down.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_file}",
            "log_type error warning notice",
        ]
        if os.geteuid() == 0:
            # Run as root, mosquitto switches to user 'mosquitto' before it
            # opens the log file, which it then cannot create in a private
            # workdir (pytest's tmp_path is mode 0700).
            lines.insert(0, f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _tls_lines(self) -> list[str]:
        t = self._tls
        if t is None:
            return []
        return [f"certfile {t.cert_file}", f"keyfile {t.key_file}", f"cafile {t.ca_file}",
                f"require_certificate {'true' if t.require_certificate else 'false'}",
                *([f"tls_version {t.tls_version}"] if t.tls_version else [])]

    def start(self) -> None:
        """Start the broker and wait until it accepts TCP connections.

        Raises:
            RuntimeError: when the process exits early or does not listen
                within 10 s; the message holds the tail of its log.
        """
        self._start(may_move=not self._port_fixed)

    def _start(self, *, may_move: bool) -> None:
        if self.pid is not None:
            return
        self._workdir.mkdir(parents=True, exist_ok=True)
        exe = find_mosquitto()
        attempt = 1
        while True:
            try:
                self._start_once(exe)
                return
            except _PortInUseError:
                if not may_move or attempt == _PORT_RETRIES:
                    raise
                attempt += 1
                self._port = free_port(self._host)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self._host, self._port), timeout=0.5):
                return True
        except OSError:
            return False

    def _start_once(self, exe: str) -> None:
        # The readiness probe below cannot tell our broker from another
        # listener on the port, so the port must be free to begin with.
        if self._listening():
            raise _PortInUseError(f"port {self._host}:{self._port} is already in use")
        self._write_config()
        self.log_file.unlink(missing_ok=True)
        with self._stderr_file.open("wb") as err:
            self._proc = subprocess.Popen(
                [exe, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                preexec_fn=_raise_open_files_limit,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = "\n".join(t for t in (_tail(self._stderr_file), _tail(self.log_file)) if t)
                if "Address already in use" in tail:
                    raise _PortInUseError(f"mosquitto port {self._port} is in use:\n{tail}")
                raise RuntimeError(f"mosquitto exited with code {code} during start:\n{tail}")
            if self._listening():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mosquitto did not listen on {self._host}:{self._port} within "
                    f"{_START_TIMEOUT_S:.0f} s:\n{_tail(self.log_file)}"
                )
            time.sleep(0.02)
        log.info("broker_started", host=self._host, port=self._port, pid=self._proc.pid)

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after 5 s. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("broker_stopped", port=self._port, returncode=proc.returncode)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: nothing is saved. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        log.info("broker_killed", port=self._port, returncode=proc.returncode)

    def restart(self) -> None:
        """Stop and start again on the same port and working directory.

        With persistence, sessions and queued messages survive (saved on stop);
        call :meth:`kill` first to restart after a crash instead.
        """
        self.stop()
        # Clients reconnect to the port they know, so never move on restart.
        self._start(may_move=False)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> MosquittoBroker:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __del__(self) -> None:
        # A forgotten broker must not outlive the test run that started it.
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()


class _PortInUseError(RuntimeError):
    pass
