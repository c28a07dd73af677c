"""Rate-limited logging for anything a peer can trigger repeatedly."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any


class LogThrottle:
    """Logs an event at most once per key and interval, and counts what it held back.

    A hostile peer can make the same warning thousands of times a second; the
    log must still show each kind of problem promptly. The first occurrence of
    a key is logged at once; repeats within ``interval_s`` are only counted,
    and the next line for that key (or ``flush``) carries ``repeated=N`` and
    ``window_s``. Keys are small tuples such as ``(device, kind)``.
    """

    def __init__(
        self,
        logger: Any,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.interval_s = interval_s
        self._clock = clock
        #: key -> [time of the last line, repeats held back since, level, event, fields]
        self._state: dict[Hashable, list[Any]] = {}

    def log(self, level: str, event: str, key: Hashable, **fields: Any) -> bool:
        """Log ``event`` for ``key`` unless it was logged within the interval.

        Returns True when a line was written.
        """
        now = self._clock()
        st = self._state.get(key)
        if st is not None and now - st[0] < self.interval_s:
            st[1] += 1
            st[2], st[3], st[4] = level, event, fields
            return False
        if st is not None and st[1]:
            fields = {**fields, "repeated": st[1], "window_s": round(now - st[0], 1)}
        getattr(self._log, level)(event, **fields)
        self._state[key] = [now, 0, level, event, {}]
        return True

    def flush(self) -> int:
        """Write the held-back counts of keys whose interval has elapsed; return lines."""
        now = self._clock()
        lines = 0
        for st in self._state.values():
            if st[1] and now - st[0] >= self.interval_s:
                getattr(self._log, st[2])(st[3], **st[4], repeated=st[1],
                                          window_s=round(now - st[0], 1))
                st[0], st[1] = now, 0
                lines += 1
        return lines

    def held_back(self, key: Hashable) -> int:
        """Repeats of ``key`` not yet reported."""
        st = self._state.get(key)
        return 0 if st is None else int(st[1])
