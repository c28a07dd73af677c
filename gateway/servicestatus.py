"""The gateway under systemd: readiness, the ``STATUS=`` line, reload and the watchdog.

``ServiceManager`` is started by the gateway once the store is open, the
sinks are registered and the status server listens: it sends ``READY=1``,
then every ``STATUS_EVERY_S`` a one-line status that ``systemctl status``
shows (devices up, backlog, oldest undelivered age, open alerts). It serves
reload requests (SIGHUP) with ``RELOADING=1`` ... ``READY=1`` around
``gateway.reload.reload_config``. Without ``$NOTIFY_SOCKET`` nothing is sent,
but reload works the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.core.snapshot import GatewaySnapshot
from gateway.reload import ReloadResult, apply, rejected
from gateway.sdnotify import Notifier

log = structlog.get_logger(__name__)

STATUS_EVERY_S = 5.0


def status_line(snap: GatewaySnapshot, note: str = "") -> str:
    """``ready; devices 3/4 up; backlog 12 (oldest undelivered 4 s); 1 alert: ...``."""
    up = sum(1 for d in snap.devices.values() if d.connected)
    backlog = sum(s.backlog_events or 0 for s in snap.sinks.values())
    ages = [s.oldest_undelivered_age_s for s in snap.sinks.values()
            if s.oldest_undelivered_age_s is not None]
    parts = ["ready" if snap.ready else "not ready (devices connecting)",
             f"devices {up}/{len(snap.devices)} up",
             f"backlog {backlog}" + (f" (oldest undelivered {max(ages):.0f} s)" if ages else "")]
    serious = [a for a in snap.alerts if a.level != "info"]
    if serious:
        parts.append(f"{len(serious)} alert(s): {serious[0].message}")
    else:
        parts.append("no alerts")
    if note:
        parts.append(note)
    return "; ".join(parts)


class ServiceManager:
    """Talks to systemd for the gateway and serves reloads."""

    def __init__(self, notifier: Notifier, snapshot: Callable[[], GatewaySnapshot],
                 config_path: Path | None, running: GatewayConfig,
                 sinks: Callable[[], Sequence[Any]]) -> None:
        self.notifier = notifier
        self._snapshot = snapshot
        self._config_path = config_path
        self._running = running
        self._sinks = sinks
        self._reload = asyncio.Event()
        #: What the last reload left to say (keys that need a restart, a rejection).
        self.note = ""
        self.reloads = 0

    def request_reload(self) -> None:
        """SIGHUP: reload at the next turn of the loop."""
        self._reload.set()

    async def run(self) -> None:
        """``READY=1``, then the status line every few seconds and reloads when asked."""
        self.notifier.ready(status_line(self._snapshot(), self.note))
        log.info("service_ready", notify=self.notifier.enabled)
        while True:
            with_reload = False
            try:
                async with asyncio.timeout(STATUS_EVERY_S):
                    await self._reload.wait()
                    with_reload = True
            except TimeoutError:
                pass
            if with_reload:
                self._reload.clear()
                await self.reload()
                self.notifier.ready(status_line(self._snapshot(), self.note))
            else:
                self.notifier.status(status_line(self._snapshot(), self.note))

    async def reload(self) -> ReloadResult:
        """Re-read the config file (on a thread: it reads files) and apply it."""
        self.notifier.reloading()
        if self._config_path is None:
            log.warning("config_reload_unavailable", reason="the gateway was not started "
                        "from a config file")
            return ReloadResult(ok=False, problems=["no config file"])
        path = self._config_path
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as err:
            result = rejected(path, err)
        else:
            result = apply(path, self._running, new, list(self._sinks()))
        self.reloads += 1
        self.note = result.status()
        return result

    def stopping(self) -> None:
        """``STOPPING=1``."""
        self.notifier.stopping("stopping: committing what is pending, then closing")
