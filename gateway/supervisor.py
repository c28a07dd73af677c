"""Keeps the gateway's long-lived tasks running when one of them fails.

Every sink, forwarder, driver, the committer and the stats/status helpers run
under a ``Supervisor``. A task that raises an unexpected exception is logged
(``task_failed``: with the traceback the first time a task fails with a given
error type, then throttled with ``repeated=N`` counts), and started again
after a capped, jittered delay (``Backoff``). The delay grows with each
failure and only goes back to the first step once the task has stayed up for
``stable_s``. Every other task keeps running meanwhile: a fault triggered by
upstream data or a device must not take ingest down with it.

Cancellation is never swallowed: a cancelled task ends, and a task that fails
while the gateway is stopping is not started again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.core.alert import Alert
from gateway.core.backoff import Backoff
from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)

#: Restart delays: the first is uniform in [0, 0.5 s], doubling up to 30 s.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
#: A task that stayed up this long is healthy again: its backoff starts over
#: and its alert is cleared.
STABLE_S = 60.0
#: At most one ``task_failed`` line per task and error type in this interval.
LOG_INTERVAL_S = 60.0


def describe(err: BaseException) -> str:
    """``TypeError: message`` (the type alone when the message is empty), kept short."""
    text = str(err)
    out = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return out if len(out) <= 300 else out[:297] + "..."


@dataclass
class TaskState:
    """What the supervisor knows about one task (shown in ``/api/status``)."""

    name: str
    factory: Callable[[], Awaitable[None]]
    backoff: Backoff
    #: running | restarting | exited (returned on its own) | cancelled |
    #: stopped (failed while the gateway was stopping; not restarted)
    state: str = "running"
    restarts: int = 0
    last_error: str | None = None
    last_failed_at: float | None = None
    #: Wall time the current state began.
    since: float = 0.0
    #: Monotonic time of the last (re)start.
    started: float = 0.0
    #: Monotonic time the next start is due (while restarting).
    next_try_at: float | None = None
    seen_errors: set[str] = field(default_factory=set)


class Supervisor:
    """Runs named coroutines and starts them again when they fail."""

    def __init__(
        self,
        *,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
        stable_s: float = STABLE_S,
        log_interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError(
                f"supervisor backoff must satisfy 0 < initial <= max "
                f"(got initial={backoff_initial}, max={backoff_max})"
            )
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_s = stable_s
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self._throttle = LogThrottle(log, interval_s=log_interval_s, clock=clock)
        self.tasks: dict[str, TaskState] = {}
        self._stopping = False

    def start(
        self, tg: asyncio.TaskGroup, name: str, factory: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as task ``name`` in ``tg``, restarting it when it fails.

        ``factory`` is called again for every restart, so it must build a
        fresh coroutine (and reload whatever state it resumes from).
        """
        if name in self.tasks:
            raise ValueError(f"task name {name!r} is already supervised")
        st = TaskState(name, factory, Backoff(self.backoff_initial, self.backoff_max,
                                               random.Random(self._rng.random())))
        self.tasks[name] = st
        return tg.create_task(self._supervise(st), name=name)

    def stop_restarts(self) -> None:
        """From now on a failing task ends instead of being started again (shutdown)."""
        self._stopping = True

    async def _supervise(self, st: TaskState) -> None:
        while True:
            st.state, st.since, st.started = "running", self._wall(), self._clock()
            st.next_try_at = None
            try:
                await st.factory()
            except asyncio.CancelledError as err:
                if self._cancelling() or self._stopping:
                    st.state, st.since = "cancelled", self._wall()
                    raise
                # Not a cancellation of this task: a future it awaited was
                # cancelled by someone else. Ending here would drop the task
                # silently (a TaskGroup ignores cancelled children), so it is
                # a failure like any other.
                await asyncio.sleep(self._failed(st, err))
                continue
            except Exception as err:
                if self._cancelling():
                    # The failure is part of being cancelled: end as cancelled.
                    st.state, st.since = "cancelled", self._wall()
                    log.warning("task_failed_while_stopping", task=st.name,
                                error=describe(err))
                    raise asyncio.CancelledError from err
                if self._stopping:
                    st.state, st.since = "stopped", self._wall()
                    log.error("task_failed", task=st.name, error=describe(err),
                              action="not restarted: the gateway is stopping", exc_info=err)
                    return
                delay = self._failed(st, err)
                await asyncio.sleep(delay)
                continue
            st.state, st.since = "exited", self._wall()
            log.info("task_exited", task=st.name)
            return

    def _failed(self, st: TaskState, err: BaseException) -> float:
        """Account for a failure; log it; return the delay before the restart."""
        now = self._clock()
        if now - st.started >= self.stable_s:
            st.backoff.reset()  # it had been healthy: start the delays over
        delay = st.backoff.next()
        st.restarts += 1
        st.last_error = describe(err)
        st.last_failed_at = self._wall()
        st.state, st.since = "restarting", st.last_failed_at
        st.next_try_at = now + delay
        kind = type(err).__name__
        fields: dict[str, Any] = {
            "task": st.name, "error": st.last_error, "restarts": st.restarts,
            "next_try_s": round(delay, 2),
        }
        if kind not in st.seen_errors:
            # The first failure of each kind carries the traceback; repeats only count.
            st.seen_errors.add(kind)
            fields["exc_info"] = err
        self._throttle.log("error", "task_failed", (st.name, kind), **fields)
        return delay

    @staticmethod
    def _cancelling() -> bool:
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0

    def flush_logs(self) -> None:
        """Write the held-back ``task_failed`` counts whose interval has elapsed."""
        self._throttle.flush()

    def alerts(self) -> list[Alert]:
        """One alert per task that failed and has not yet stayed up for ``stable_s``."""
        return [Alert("task_failed", f"task:{name}", text, detail=self.tasks[name].last_error)
                for name, text in self.alert_lines()]

    def alert_lines(self) -> list[tuple[str, str]]:
        """(task, line) per task that failed and has not yet stayed up for ``stable_s``."""
        now = self._clock()
        out: list[tuple[str, str]] = []
        for st in self.tasks.values():
            if not st.restarts:
                continue
            head = (f"task {st.name} failed ({st.last_error}); "
                    f"restarted {st.restarts} time{'s' if st.restarts != 1 else ''}")
            if st.state == "restarting" and st.next_try_at is not None:
                wait = max(0.0, st.next_try_at - now)
                out.append((st.name, f"{head}, next try in {wait:.1f} s"))
            elif st.state == "running" and now - st.started < self.stable_s:
                out.append((st.name, f"{head}, running again for {now - st.started:.1f} s"))
            elif st.state == "stopped":
                out.append((st.name, f"{head}, not restarted (stopping)"))
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per task: state, restarts, last error, since (wall time of the current state)."""
        now = self._clock()
        return {
            name: {
                "state": st.state,
                "restarts": st.restarts,
                "last_error": st.last_error,
                "last_failed_at": st.last_failed_at,
                "since": st.since,
                "next_try_s": (round(max(0.0, st.next_try_at - now), 2)
                               if st.next_try_at is not None else None),
            }
            for name, st in self.tasks.items()
        }
