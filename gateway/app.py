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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from buffer.lock import StoreLock, StoreLocked
from buffer.service import Committer, StoreService
from buffer.store import Store
from gateway.alerts import AlertBook, RejectionWatch, sink_alerts, store_alerts, summary
from gateway.build import build_drivers, build_sinks
from gateway.config import GatewayConfig
from gateway.core.protocols import Driver, Sink
from gateway.core.snapshot import (
    CommitterSnapshot,
    DeviceSnapshot,
    ForwarderSnapshot,
    GatewaySnapshot,
    SinkSnapshot,
    StoreSnapshot,
    TaskSnapshot,
    routed_events,
)
from gateway.forwarder import Forwarder
from gateway.history import History, Sample
from gateway.sdnotify import Notifier
from gateway.servicestatus import ServiceManager
from gateway.supervisor import Supervisor, describe
from gateway.watchdog import Watchdog, watchdog_interval

T = TypeVar("T")

log = structlog.get_logger(__name__)

STATS_REFRESH_S = 2.0


class GatewayFailed(Exception):
    """The gateway ended on an error; it was logged as ``gateway_failed``."""


class StartupError(Exception):
    """The gateway cannot start; ``str()`` is one line naming the problem.

    ``reason`` says which: ``store_dir`` (the store's folder or file cannot be
    created, read or written) or ``status_port`` (the status address cannot be
    bound). Nothing was started; the command line maps each to an exit code.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_store_dir(path: Path) -> None:
    """Raise ``StartupError`` unless the store's folder and files are usable by this user."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StartupError("store_dir", f"store directory {folder} cannot be created "
                           f"({err.strerror or err})") from None
    if not folder.is_dir():
        raise StartupError("store_dir", f"store directory {folder} is not a directory")
    if path.is_dir():
        raise StartupError("store_dir", f"store.path {path} is a directory; it must name "
                           f"the database file (e.g. {path / 'buffer.db'})")
    if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
        raise StartupError("store_dir", f"store directory {folder} is not readable and "
                           f"writable by this user (uid {os.getuid()}); fix its owner or mode")
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if f.exists() and not os.access(f, os.R_OK | os.W_OK):
            raise StartupError("store_dir", f"store file {f} is not readable and writable "
                               f"by this user (uid {os.getuid()}); fix its owner or mode")


class Gateway:
    """All components of one gateway process."""

    def __init__(self, cfg: GatewayConfig, *, supervisor: Supervisor | None = None,
                 config_path: Path | None = None) -> None:
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
        self.sinks: list[Sink] = build_sinks(cfg, started_at=self.started_at,
                                             devices=self.device_states)
        self.drivers: list[Driver] = build_drivers(cfg, self.committer)
        self.forwarders: list[Forwarder] = []
        self.store_stats: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.stopping = False
        self._stop = asyncio.Event()
        self.rejections = RejectionWatch()
        self.alert_book = AlertBook()
        self.history = History(STATS_REFRESH_S)
        #: systemd: READY/STATUS/STOPPING, reload (SIGHUP) and the watchdog.
        self.notifier = Notifier()
        self.service_manager = ServiceManager(self.notifier, self.snapshot, config_path, cfg,
                                              lambda: self.sinks)
        self.watchdog: Watchdog | None = None

    def device_states(self) -> dict[str, bool]:
        """Whether each device is connected (MQTT presence topics)."""
        return {dev_id: bool(figures.get("connected"))
                for d in self.drivers for dev_id, figures in d.snapshot().items()}

    def _open_store(self) -> Store:
        s = self.cfg.store
        return Store(s.path, max_bytes=s.max_bytes, synchronous=s.synchronous,
                     retention_s=s.retention, dead_letter_max_bytes=s.dead_letter_max_bytes,
                     dead_letter_payload_bytes=s.dead_letter_payload_bytes,
                     min_free_bytes=s.min_free_bytes, reserve_bytes=s.reserve_bytes,
                     archive_retention_s=s.discarded_retention)

    def stop(self) -> None:
        """Ask the gateway to shut down (idempotent, callable from signal handlers)."""
        self._stop.set()

    async def run(self, *, install_signals: bool = True) -> None:
        """Run until ``stop`` (or SIGTERM/SIGINT); then shut down in order.

        Raises ``StartupError`` (one line for the operator, nothing started)
        when the store's folder is unusable or the status port cannot be bound,
        ``StoreLocked`` (before touching the store or any device) when another
        gateway runs on this store, and ``GatewayFailed`` after logging
        ``gateway_failed`` when anything escapes the supervisor.
        """
        _check_store_dir(self.cfg.store.path)
        try:
            self.lock.acquire()
        except StoreLocked:
            raise
        except OSError as err:
            raise StartupError(
                "store_dir", f"store directory {self.cfg.store.path.parent} is unusable: "
                f"cannot create the lock file {self.lock.path} ({err.strerror or err})") from err
        except Exception as err:
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
            loop.add_signal_handler(signal.SIGHUP, self.service_manager.request_reload)
        failed = False
        try:
            await self._run_tasks()
        except StartupError as err:
            failed = True
            log.error("gateway_start_failed", reason=err.reason, error=str(err))
            raise
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
        status = None
        if self.cfg.status.enabled:
            from gateway.status import StatusServer

            status = StatusServer(self, self.cfg.status)
            # Bound before any task starts: a port in use at start-up is fatal (one
            # line); a failure of the running server later is supervised.
            try:
                await status.start()
            except OSError as err:
                c = self.cfg.status
                raise StartupError(
                    "status_port", f"status port {c.host}:{c.port} cannot be bound "
                    f"({err.strerror or err}): another process listens there? set "
                    "status.port to a free port or status.enabled = false") from err
        log.info("gateway_starting", site=self.cfg.site.id, store=str(self.cfg.store.path),
                 devices=len(self.cfg.devices), sinks=len(self.sinks), pid=os.getpid())
        sup = self.supervisor
        try:
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
                if status is not None:
                    others.append(sup.start(tg, "status", status.serve))
                others.append(sup.start(tg, "readiness", self._readiness))
                others += self._start_systemd(tg)
                await self._stop.wait()
                await self._shutdown(driver_tasks, commit_task, others)
        finally:
            if status is not None:
                await status.close()  # when the task never ran (a failure in between)

    def _start_systemd(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        # Started once the store is open, the sinks registered and the status
        # server listens: the service manager's first act is READY=1.
        tasks = [self.supervisor.start(tg, "systemd", self.service_manager.run)]
        interval = watchdog_interval()
        if interval is not None:
            dog = self.watchdog = Watchdog(self.notifier, interval, self.committer,
                                           lambda: self.forwarders)
            tasks.append(self.supervisor.start(tg, "watchdog", dog.run))
        return tasks

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
        self.service_manager.stopping()
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
        trail = await self.service.call(self.service.store.audit_trail, limit=1)
        audit_seen = int(trail[0]["id"]) if trail else 0
        while True:
            store = self.service.store
            if await self.service.call(store.refresh_if_changed_elsewhere):
                self.service.space_freed.set()  # an operator freed or added rows
                self.service.notify()
                audit_seen = await self._log_operator_actions(audit_seen)
            self.store_stats = await self.service.call(store.stats)
            self._observe_rejections()
            self._record_history()
            self.snapshot()  # the alert log follows what the page shows
            self.alert_book.flush()
            self.supervisor.flush_logs()
            await asyncio.sleep(STATS_REFRESH_S)

    async def _log_operator_actions(self, seen: int) -> int:
        """Log replays and discards another process (the CLI) wrote to the audit trail."""
        rows = await self.service.call(self.service.store.audit_trail, limit=100)
        for r in reversed([r for r in rows if r["id"] > seen]):
            if r["via"] not in ("api", "page"):  # those were logged as they happened
                log.info("operator_action", action=r["action"], who=r["who"], via=r["via"],
                         count=r["count"], audit_id=r["id"], filter=r["filter"],
                         ids=r["ids"][:20])
        return max([seen, *(int(r["id"]) for r in rows)])

    def snapshot(self) -> GatewaySnapshot:
        """Everything the status page and metrics show, as components publish it."""
        devices: dict[str, DeviceSnapshot] = {}
        for d in self.drivers:
            for dev_id, figures in d.snapshot().items():
                devices[dev_id] = DeviceSnapshot.from_driver(
                    dev_id, figures, self.rejections.rejecting_all(dev_id))
        store = StoreSnapshot.from_stats(self.store_stats)
        committer = CommitterSnapshot.from_dict(self.committer.snapshot())
        now = time.time()
        sinks = {}
        for f in self.forwarders:
            sid = f.sink.id
            oldest = store.oldest_pending.get(sid)
            backlog = store.backlog.get(sid)
            rate = self.history.rate_out(sid)
            sinks[sid] = SinkSnapshot.build(
                sid, f.sink.snapshot(), ForwarderSnapshot(**f.snapshot()), backlog,
                oldest_pending_at=oldest if backlog else None,
                oldest_undelivered_age_s=round(max(0.0, now - oldest), 1)
                if oldest is not None and backlog else None,
                rate_out_per_s=None if rate is None else round(rate, 2),
                drain_estimate_s=_rounded(self.history.drain_s(sid)),
                events_in=routed_events(committer.events_by_type, f.sink.routes))
        alerts = [a for s in sinks.values() for a in sink_alerts(s, now)]
        alerts.extend(store_alerts(store, committer, sinks))
        for d in self.drivers:
            alerts.extend(d.alerts())
        alerts.extend(self.rejections.alerts())
        alerts.extend(self.supervisor.alerts())
        shown = self.alert_book.update(alerts)
        ready = self.ready.is_set()
        return GatewaySnapshot(
            site=self.cfg.site.id,
            pid=os.getpid(),
            uptime_s=round(time.time() - self.started_at, 1),
            ready=ready,
            alerts=shown,
            devices=devices,
            sinks=sinks,
            store=store,
            committer=committer,
            tasks={name: TaskSnapshot.from_dict(t)
                   for name, t in self.supervisor.snapshot().items()},
            unrouted_messages=sum(getattr(d, "unrouted", 0) for d in self.drivers),
            rss_bytes=_rss_bytes(),
            started_at=self.started_at,
            summary=summary(ready, self.stopping, shown),
        )

    def _record_history(self) -> None:
        store = StoreSnapshot.from_stats(self.store_stats)
        self.history.add(Sample(
            t=time.time(), events_in=self.committer.snapshot().get("events", 0),
            delivered={f.sink.id: f.snapshot()["events_delivered"] for f in self.forwarders},
            backlog=dict(store.backlog), store_used_bytes=store.used_bytes))

    def _observe_rejections(self) -> None:
        counts: dict[str, tuple[int, int]] = {}
        for d in self.drivers:
            for dev_id, figures in d.snapshot().items():
                dev = DeviceSnapshot.from_driver(dev_id, figures)
                counts[dev_id] = (dev.messages, dev.rejected)
        self.rejections.observe(counts)

    async def with_store(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store's thread (the status server's operator routes)."""
        return await self.service.call(fn, self.service.store)

    def sink_routes(self) -> dict[str, frozenset[str] | None]:
        """Each sink's event types (``None``: all)."""
        return {s.id: s.routes for s in self.sinks}

    def wake_forwarders(self) -> None:
        """New rows are in the store (a replay): wake the forwarders."""
        self.service.notify()


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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_gateway(cfg: GatewayConfig, config_path: Path | None = None) -> None:
    """Run the gateway on uvloop when available (``config_path``: reloaded on SIGHUP)."""
    async def _main() -> None:
        await Gateway(cfg, config_path=config_path).run()

    try:
        import uvloop

        uvloop.run(_main())
    except ImportError:
        asyncio.run(_main())
