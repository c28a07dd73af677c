"""systemd's watchdog (``WatchdogSec=``): ``WATCHDOG=1`` only while the gateway makes progress.

With ``$WATCHDOG_USEC`` set (and ``$WATCHDOG_PID`` unset or this process),
``Watchdog.run`` pings at half the interval, but only while

(a) the event loop turns: the pinger is a task on the loop, so a blocked loop
    sends nothing; a wake-up later than ``lag_limit_s`` skips that ping too;
(b) the store's committer makes progress: units are pending and no commit
    finished for longer than ``stall_limit_s`` means the store thread is stuck
    (a store that is full is not stuck: it retries its commit every half second);
(c) each forwarder makes progress: a send awaited much longer than its sink's
    own timeout is stuck. A sink backing off because its upstream is down is
    not: it is waiting by design, between sends that each end in time.

When a check fails the reason is logged once (``watchdog_stopped_pinging``) and
the pings stop; systemd then kills and restarts the gateway after
``WatchdogSec``. A check that passes again resumes the pings (logged too).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from gateway.sdnotify import Notifier

log = structlog.get_logger(__name__)


class Progressing(Protocol):
    """The committer as the watchdog sees it."""

    @property
    def pending(self) -> int: ...

    def stalled_s(self, now: float) -> float: ...


class Sending(Protocol):
    """A forwarder as the watchdog sees it (``sink.send_age``/``send_timeout`` optional)."""

    @property
    def sink(self) -> object: ...


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """The watchdog interval in seconds systemd asks for, or ``None`` (no watchdog)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. a wrapper that exec'd us)
    try:
        value = int(usec)
    except ValueError:
        log.warning("watchdog_usec_invalid", value=usec)
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """Pings systemd's watchdog while the loop, the committer and the forwarders progress."""

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        committer: Progressing,
        forwarders: Callable[[], Sequence[Sending]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self.period_s = interval_s / 2
        #: A loop that wakes up later than this skipped (at least) one ping.
        self.lag_limit_s = max(0.5, interval_s / 3)
        #: Work pending and no commit finished for this long: the committer is stuck.
        self.stall_limit_s = interval_s
        self._committer = committer
        self._forwarders = forwarders
        self._clock = clock
        self.pings = 0
        #: Why the pings stopped (``None`` while pinging).
        self.stopped_reason: str | None = None
        #: Every reason the pings stopped, in order.
        self.stops: list[str] = []

    def problem(self, lag_s: float = 0.0) -> str | None:
        """Why the gateway is not making progress now, or ``None``."""
        if lag_s > self.lag_limit_s:
            return f"the event loop was blocked for {lag_s:.1f} s"
        now = self._clock()
        stalled = self._committer.stalled_s(now)
        if stalled > self.stall_limit_s:
            return (f"the store committer is stuck: {self._committer.pending} unit(s) pending "
                    f"and no commit finished for {stalled:.0f} s")
        for f in self._forwarders():
            sink = f.sink
            age_of = getattr(sink, "send_age", None)
            timeout = getattr(sink, "send_timeout", None)
            if age_of is None or timeout is None:
                continue
            age = age_of(now)
            if age is not None and age > float(timeout) + self.interval_s:
                return (f"sink {getattr(sink, 'id', '?')}: a send has been awaited for "
                        f"{age:.0f} s, beyond its timeout of {float(timeout):g} s")
        return None

    def check(self, lag_s: float = 0.0) -> bool:
        """Ping when there is no problem; log when that changes. True if pinged."""
        reason = self.problem(lag_s)
        if reason is None:
            if self.stopped_reason is not None:
                log.warning("watchdog_pinging_again", was=self.stopped_reason)
                self.stopped_reason = None
            self.pings += 1
            self.notifier.watchdog()
            return True
        if self.stopped_reason is None:
            log.error("watchdog_stopped_pinging", reason=reason,
                      restart_in_s=round(self.interval_s, 1))
            self.stops.append(reason)
        self.stopped_reason = reason
        return False

    async def run(self) -> None:
        """Ping every half interval until cancelled."""
        log.info("watchdog_enabled", interval_s=round(self.interval_s, 3))
        self.check()
        while True:
            due = self._clock() + self.period_s
            await asyncio.sleep(self.period_s)
            self.check(max(0.0, self._clock() - due))
