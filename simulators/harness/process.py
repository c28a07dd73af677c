"""One way to run a child process for tests, benchmarks and the demo.

:class:`ChildProcess` starts a command with its output appended to a log
file, waits for a readiness predicate with a timeout (failing with the log
tail, or at once when the child exits), stops it with SIGTERM and then
SIGKILL after a bounded wait, and reads its RSS and CPU time from ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "ROOT",
    "ChildProcess",
    "ChildProcessFailed",
    "cpu_seconds",
    "python_module",
    "simulator",
    "stop_all",
]

#: The project's root: children run there with it first on ``PYTHONPATH``,
#: so a worktree's own sources win over an installed copy.
ROOT = Path(__file__).resolve().parents[2]
_TICKS = os.sysconf("SC_CLK_TCK")


class ChildProcessFailed(RuntimeError):
    """A child process exited while it was expected to become ready."""


def python_module(module: str, *args: str) -> list[str]:
    """The command line running ``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


class ChildProcess:
    """A child process with its output in a log file.

    ``log_path`` is appended to, so a child started again (after a kill, say)
    keeps one log; ``None`` discards the output.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path | None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        if not argv:
            raise ValueError(f"{name}: empty command line")
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the command (again, if it ran before)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if self.log_path is None:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
            )
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.cwd
                )
        self.starts += 1

    @property
    def running(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it exited (negative: killed by that signal), else None."""
        return None if self.proc is None else self.proc.poll()

    def stop(
        self,
        timeout: float = 10.0,
        *,
        raise_on_kill: bool = False,
        sig: signal.Signals = signal.SIGTERM,
    ) -> int:
        """``sig`` (SIGTERM), wait up to ``timeout`` seconds, then SIGKILL; return the exit code.

        With ``raise_on_kill``, a child that had to be killed raises
        :class:`subprocess.TimeoutExpired` (after it is gone): for callers that
        treat a slow shutdown as a failure.
        """
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                if raise_on_kill:
                    raise
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL and wait, as a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- readiness ---------------------------------------------------------

    def wait_until(
        self, ready: Callable[[], bool], timeout: float, what: str, *, poll: float = 0.05
    ) -> None:
        """Call ``ready`` until it returns true.

        Raises:
            ChildProcessFailed: when the child exits first (with its log tail).
            TimeoutError: after ``timeout`` seconds, naming ``what``, with the log tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None:
                raise RuntimeError(f"{self.name} was never started")
            code = self.proc.poll()
            if code is not None:
                raise ChildProcessFailed(
                    f"{self.name} exited with {code} before {what}:\n{self.log_tail()}"
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name}: no {what} after {timeout:g}s:\n{self.log_tail()}"
                )
            time.sleep(poll)

    def wait_listening(self, port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
        """Wait until ``host:port`` accepts TCP connections."""

        def accepts() -> bool:
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                return True
            return False

        self.wait_until(accepts, timeout, f"listener on {host}:{port}")

    def wait_for_log_event(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first JSON log line whose ``event`` is ``event``, once it is written."""
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            found[:] = self.log_events(event)[:1]
            return bool(found)

        self.wait_until(logged, timeout, f"log event {event!r}", poll=0.1)
        return found[0]

    # -- observations ------------------------------------------------------

    def log_text(self) -> str:
        """Everything logged so far (empty when the output is discarded)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the log."""
        if self.log_path is None:
            return "(output discarded)"
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``event``, oldest first."""
        out: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("event") == event:
                out.append(doc)
        return out

    def rss_bytes(self) -> int:
        """Resident memory of the child, from ``/proc``."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the child so far, from ``/proc``."""
        return cpu_seconds(self.pid)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid``, from ``/proc``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def simulator(name: str, args: Sequence[str], log_path: Path | None) -> ChildProcess:
    """``python -m simulators <name> args...`` as a (not yet started) child process."""
    return ChildProcess(name, python_module("simulators", name, *args), log_path)


def stop_all(children: Sequence[ChildProcess], timeout: float = 10.0) -> None:
    """Stop many children in parallel: SIGTERM to all, one shared wait, then SIGKILL."""
    for child in children:
        if child.running and child.proc is not None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        child.stop(max(0.1, deadline - time.monotonic()))
