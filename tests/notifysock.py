"""A real ``NOTIFY_SOCKET`` a test owns: an AF_UNIX datagram socket, read on a thread."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from types import TracebackType


class NotifySocket:
    """Binds an abstract AF_UNIX datagram socket; keeps every message with its arrival time."""

    def __init__(self) -> None:
        self.name = f"@warehouse-gateway-test-{os.getpid()}-{time.monotonic_ns()}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(b"\0" + self.name[1:].encode())
        self._sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        """Messages (time, fields) carrying ``key``."""
        with self._lock:
            return [(t, m) for t, m in self.messages if key in m]

    def pings(self, since: float = 0.0) -> list[float]:
        """Arrival times of ``WATCHDOG=1``."""
        return [t for t, m in self.with_key("WATCHDOG") if t >= since and m["WATCHDOG"] == "1"]

    def statuses(self) -> list[str]:
        """Every ``STATUS=`` line, in order."""
        return [m["STATUS"] for _, m in self.with_key("STATUS")]

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._closed = True
        self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] without any of ``times``."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))
