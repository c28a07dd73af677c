"""Alerts the gateway derives from its components' counters.

``RejectionWatch`` turns "this device's every message becomes an ingest dead
letter" into an alert: a counter inside a device's details is easy to miss,
and a device whose payload format changed (a firmware update, a remapped
topic) delivers nothing at all while looking connected and busy.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

#: The window over which a device's messages and rejections are compared.
REJECTION_WINDOW_S = 60.0
#: Fewest messages in the window before "all rejected" is an alert (one or two
#: bad messages from a quiet device are not).
REJECTION_MIN_MESSAGES = 20


class RejectionWatch:
    """Per device: were all of the last minute's messages (at least 20) rejected?

    Fed with each device's cumulative counters (messages received, ingest dead
    letters) every few seconds; compares the newest sample with the newest one
    at least ``window_s`` old (or with zero, the counters' value at start).
    """

    def __init__(self, window_s: float = REJECTION_WINDOW_S,
                 min_messages: int = REJECTION_MIN_MESSAGES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or min_messages < 1:
            raise ValueError(f"window_s must be > 0 and min_messages >= 1, "
                             f"got {window_s!r} and {min_messages!r}")
        self.window_s = window_s
        self.min_messages = min_messages
        self._clock = clock
        # device -> samples (time, messages, rejected), oldest first; the first
        # one may be older than the window (it is the comparison base).
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}
        self._rejecting: dict[str, tuple[int, int]] = {}

    def observe(self, counts: Mapping[str, tuple[int, int]]) -> None:
        """Record each device's ``(messages, rejected)`` totals since start."""
        now = self._clock()
        cutoff = now - self.window_s
        for device, (messages, rejected) in counts.items():
            samples = self._samples.setdefault(device, deque())
            if samples and (messages < samples[-1][1] or rejected < samples[-1][2]):
                samples.clear()  # counters went back (a driver restarted): start over
            samples.append((now, messages, rejected))
            # Keep one sample at or before the cutoff as the base; drop older ones.
            while len(samples) > 1 and samples[1][0] <= cutoff:
                samples.popleft()
            if samples[0][0] <= cutoff:
                _, base_messages, base_rejected = samples[0]
            else:
                base_messages, base_rejected = 0, 0  # counters start at zero
            seen = messages - base_messages
            bad = rejected - base_rejected
            if seen >= self.min_messages and bad >= seen:
                self._rejecting[device] = (seen, bad)
            else:
                self._rejecting.pop(device, None)
        for device in set(self._samples) - set(counts):
            del self._samples[device]
            self._rejecting.pop(device, None)

    def rejecting_all(self, device: str) -> bool:
        """True while every recent message of ``device`` was rejected."""
        return device in self._rejecting

    def alerts(self) -> list[str]:
        """One line per device whose every recent message was rejected."""
        return [
            f"device {device}: all {seen} messages of the last {self.window_s:.0f} s were "
            f"rejected as ingest dead letters (payload format or mapping wrong?); "
            f"list them with GET /api/dead-letters?kind=ingest"
            for device, (seen, _) in sorted(self._rejecting.items())
        ]
