"""The notify client: a filesystem socket path, an abstract name, and nothing without either."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier
from gateway.watchdog import watchdog_interval


def test_sends_to_a_socket_path(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        n = Notifier(str(path))
        assert n.ready("ready;\n devices 1/1 up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ready; devices 1/1 up"
        assert n.reloading()
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        assert fields["RELOADING"] == "1" and int(fields["MONOTONIC_USEC"]) > 0
        n.close()


def test_without_a_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.watchdog() is False


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone"))
    assert n.enabled and n.status("x") is False


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
