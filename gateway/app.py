"""The gateway process: builds every component from the config and runs them.

One ``asyncio.TaskGroup`` owns the process; every long-lived task is named
and runs under a ``Supervisor`` (gateway/supervisor.py): a task that fails
unexpectedly is logged, shown as an alert and started again with backoff
while every other task keeps running. Before anything else the process takes
the store's exclusive lock (buffer/lock.py): one gateway per store.
Shutdown (SIGTERM/SIGINT or ``stop``) is ordered and bounded:

1. drivers stop taking new messages (they stay with the broker, unacknowledged);
2. the committer commits what it holds, and those sources are acknowledged;
3. drivers disconnect; forwarders, sinks and the status server are cancelled
   (a batch in flight is resent after restart — upstream deduplicates);
4. the store is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from typing import Any

import structlog

from buffer.lock import StoreLock, StoreLocked
from buffer.service import Committer, StoreService
from buffer.store import Store
from gateway.build import build_drivers, build_sinks
from gateway.config import GatewayConfig
from gateway.core.protocols import Driver, Sink
from gateway.forwarder import Forwarder
from gateway.supervisor import Supervisor, describe

log = structlog.get_logger(__name__)

STATS_REFRESH_S = 2.0


class GatewayFailed(Exception):
    """The gateway ended on an error; it was logged as ``gateway_failed``."""


class Gateway:
    """All components of one gateway process."""

    def __init__(self, cfg: GatewayConfig, *, supervisor: Supervisor | None = None) -> None:
        self.cfg = cfg
        self.supervisor = supervisor or Supervisor()
        self.lock = StoreLock(cfg.store.path)
        self.started_at = time.time()
        self.service = StoreService(self._open_store)
        self.committer = Committer(
            self.service,
            window_s=cfg.store.group_commit,
            max_units=cfg.store.group_commit_max,
        )
        self.sinks: list[Sink] = build_sinks(cfg)
        self.drivers: list[Driver] = build_drivers(cfg, self.committer)
        self.forwarders: list[Forwarder] = []
        self.store_stats: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.stopping = False
        self._stop = asyncio.Event()

    def _open_store(self) -> Store:
        s = self.cfg.store
        return Store(s.path, max_bytes=s.max_bytes, synchronous=s.synchronous,
                     retention_s=s.retention, dead_letter_max_bytes=s.dead_letter_max_bytes,
                     dead_letter_payload_bytes=s.dead_letter_payload_bytes,
                     min_free_bytes=s.min_free_bytes, reserve_bytes=s.reserve_bytes)

    def stop(self) -> None:
        """Ask the gateway to shut down (idempotent, callable from signal handlers)."""
        self._stop.set()

    async def run(self, *, install_signals: bool = True) -> None:
        """Run until ``stop`` (or SIGTERM/SIGINT); then shut down in order.

        Raises ``StoreLocked`` (before touching the store or any device) when
        another gateway runs on this store, and ``GatewayFailed`` after
        logging ``gateway_failed`` when anything escapes the supervisor.
        """
        try:
            self.lock.acquire()
        except StoreLocked:
            raise
        except Exception as err:  # e.g. the store's folder cannot be created
            raise _failed(err) from err
        try:
            await self._run(install_signals)
        finally:
            self.lock.release()

    async def _run(self, install_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        failed = False
        try:
            await self._run_tasks()
        except Exception as err:
            failed = True
            raise _failed(err) from err
        finally:
            for s in self.sinks:
                with contextlib.suppress(Exception):
                    await s.close()
            await self.service.close()
            log.info("gateway_stopped", uptime_s=round(time.time() - self.started_at, 1),
                     failed=failed)

    async def _run_tasks(self) -> None:
        store = await self.service.open()
        report = store.open_report
        if report.corrupt:
            log.error("store_recovered_from_corruption", moved_to=report.moved_to,
                      salvaged_events=report.salvaged_events, reason=report.reason)
        cursors = await self.service.call(store.register_sinks, [s.id for s in self.sinks])
        self.forwarders = [Forwarder(s, self.service, cursors[s.id]) for s in self.sinks]
        log.info("gateway_starting", site=self.cfg.site.id, store=str(self.cfg.store.path),
                 devices=len(self.cfg.devices), sinks=len(self.sinks), pid=os.getpid())
        sup = self.supervisor
        async with asyncio.TaskGroup() as tg:
            # The committer keeps its pending units across a restart (Committer.run).
            commit_task = sup.start(tg, "committer", self.committer.run)
            driver_tasks = [sup.start(tg, d.name, d.run) for d in self.drivers]
            others = [sup.start(tg, f"sink-{s.id}", s.run) for s in self.sinks]
            others += [
                sup.start(tg, f"forwarder-{f.sink.id}", functools.partial(self._forward, f))
                for f in self.forwarders
            ]
            others.append(sup.start(tg, "stats", self._refresh_stats))
            if self.cfg.status.enabled:
                from gateway.status import serve_status

                others.append(sup.start(tg, "status", functools.partial(serve_status, self)))
            others.append(sup.start(tg, "readiness", self._readiness))
            await self._stop.wait()
            await self._shutdown(driver_tasks, commit_task, others)

    async def _forward(self, forwarder: Forwarder) -> None:
        # Every (re)start resumes from the committed cursor: after a failure the
        # in-memory one may be past a cursor move that never reached the store.
        cursors = await self.service.call(self.service.store.cursors)
        forwarder.cursor = cursors[forwarder.sink.id]
        await forwarder.run()

    async def _shutdown(
        self,
        drivers: list[asyncio.Task[None]],
        committer: asyncio.Task[None],
        others: list[asyncio.Task[Any]],
    ) -> None:
        self.stopping = True
        self.ready.clear()
        self.supervisor.stop_restarts()
        budget = self.cfg.shutdown_timeout
        deadline = time.monotonic() + budget
        log.info("gateway_stopping", pending_units=self.committer.pending)
        for d in self.drivers:
            d.pause()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, budget / 2)):
                await self.committer.flushed()
        await asyncio.sleep(0.05)  # let the last PUBACKs reach the socket
        for task in drivers:
            task.cancel()
        await _wait(drivers, deadline)
        committer.cancel()
        await _wait([committer], deadline)
        if self.committer.pending:
            # Cancelled while waiting to be restarted: commit (or release) what it holds.
            await self.committer.drain()
        for task in others:
            task.cancel()
        await _wait(others, deadline)

    async def _readiness(self) -> None:
        while True:
            ok = all(d.ready() for d in self.drivers)
            if ok and not self.stopping:
                self.ready.set()
            else:
                self.ready.clear()
            await asyncio.sleep(0.2)

    async def _refresh_stats(self) -> None:
        while True:
            store = self.service.store
            if await self.service.call(store.refresh_if_changed_elsewhere):
                self.service.space_freed.set()  # an operator freed or added rows
                self.service.notify()
            self.store_stats = await self.service.call(store.stats)
            self.supervisor.flush_logs()
            await asyncio.sleep(STATS_REFRESH_S)

    def snapshot(self) -> dict[str, Any]:
        """Everything the status page and metrics show."""
        devices: dict[str, Any] = {}
        for d in self.drivers:
            devices.update(d.snapshot())
        store = self.store_stats
        sinks = {}
        for f in self.forwarders:
            snap = f.sink.snapshot()
            snap.update(f.snapshot())
            snap["backlog_events"] = store.get("backlog", {}).get(f.sink.id)
            sinks[f.sink.id] = snap
        alerts = [f"sink {sid}: {s['alert']}" for sid, s in sinks.items() if s.get("alert")]
        if self.committer.full:
            if self.committer.stats.full_reason == "disk":
                alerts.append("store full (disk): sources are being held back; free disk space")
            else:
                alerts.append("store full: sources are being held back")
        if store.get("dead_letter_bytes", 0) > store.get("dead_letter_max_bytes", 1 << 62):
            alerts.append("dead letters over budget: replay or discard sink dead letters")
        for d in self.drivers:
            alerts.extend(d.alerts())
        alerts.extend(self.supervisor.alerts())
        report = store.get("open_report", {})
        if report.get("corrupt"):
            alerts.append(
                f"store file was corrupt and moved to {report.get('moved_to')}; "
                f"{report.get('salvaged_events')} events salvaged"
            )
        if report.get("rewound"):
            alerts.append(
                f"store file was rewound (its -wal file was lost?): it opened at seq "
                f"{report.get('opened_at_seq')}, its high-water mark is "
                f"{report.get('high_water_seq')}; events after seq {report.get('opened_at_seq')}"
                f" that were not yet delivered are lost; seq resumes at "
                f"{report.get('resumes_at_seq')}"
            )
        return {
            "site": self.cfg.site.id,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "ready": self.ready.is_set(),
            "alerts": alerts,
            "devices": devices,
            "sinks": sinks,
            "store": store,
            "committer": self.committer.snapshot(),
            "tasks": self.supervisor.snapshot(),
            "unrouted_messages": sum(getattr(d, "unrouted", 0) for d in self.drivers),
            "rss_bytes": _rss_bytes(),
        }


def _failed(err: Exception) -> GatewayFailed:
    """Log ``gateway_failed`` with the traceback; the error for the caller to raise."""
    root: BaseException = err
    while isinstance(root, BaseExceptionGroup) and len(root.exceptions) == 1:
        root = root.exceptions[0]  # a TaskGroup wraps the one error that ended it
    log.error("gateway_failed", error=describe(root), exc_info=err)
    return GatewayFailed(describe(root))


async def _wait(tasks: list[asyncio.Task[Any]], deadline: float) -> None:
    if not tasks:
        return
    remaining = max(0.1, deadline - time.monotonic())
    _, pending = await asyncio.wait(tasks, timeout=remaining)
    for t in pending:
        log.warning("task_did_not_stop", task=t.get_name())


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_gateway(cfg: GatewayConfig) -> None:
    """Run the gateway on uvloop when available."""
    async def _main() -> None:
        await Gateway(cfg).run()

    try:
        import uvloop

        uvloop.run(_main())
    except ImportError:
        asyncio.run(_main())
