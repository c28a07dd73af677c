"""A small client of systemd's notify protocol (``sd_notify(3)``), no dependency.

Messages are ``KEY=value`` lines sent as one datagram to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written ``@name``).
Without that variable (not started by systemd with ``Type=notify``) every
call is a no-op, so the gateway runs the same from a shell.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger(__name__)


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()  # abstract namespace
    return name


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Notifier:
    """Sends notify messages to ``$NOTIFY_SOCKET`` (or does nothing without it)."""

    def __init__(self, socket_name: str | None = None) -> None:
        name = os.environ.get("NOTIFY_SOCKET") if socket_name is None else socket_name
        self._address = _address(name) if name else None
        self._sock: socket.socket | None = None
        self._failed_logged = False
        self.last_status: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``FIELD=value`` lines (``READY=1``, ``STATUS=...``); True if sent.

        A failure (socket gone) is logged once and never raised: notifying is
        a courtesy to the service manager, not part of the gateway's work.
        """
        if self._address is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self._address)
        except OSError as err:
            if not self._failed_logged:
                log.warning("sd_notify_failed", socket=os.environ.get("NOTIFY_SOCKET"),
                            error=err.strerror or str(err))
                self._failed_logged = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (with a status line)."""
        if status is None:
            return self.send(READY=1)
        self.last_status = _one_line(status)
        return self.send(READY=1, STATUS=self.last_status)

    def status(self, text: str) -> bool:
        """``STATUS=`` (one line, shown by ``systemctl status``)."""
        self.last_status = _one_line(text)
        return self.send(STATUS=self.last_status)

    def stopping(self, status: str = "stopping") -> bool:
        """``STOPPING=1``."""
        self.last_status = _one_line(status)
        return self.send(STOPPING=1, STATUS=self.last_status)

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (as ``Type=notify-reload`` wants)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS="reloading the config")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive and making progress."""
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
