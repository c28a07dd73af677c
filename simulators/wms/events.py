"""The WMS simulator's record of accepted events, bounded and cheap to keep."""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any

__all__ = ["EventLog"]


class EventLog:
    """Accepted events in arrival order, the newest ``limit`` of them.

    Kept as one ``(received_at, events)`` chunk per request rather than a
    record per event: with a million events kept, the garbage collector's
    walks over per-event tuples cost as much as ingesting them.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.total = 0
        """Events ever added; the index of the next one."""
        self._chunks: deque[tuple[float, list[dict[str, Any]]]] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def first(self) -> int:
        """Index of the oldest event still kept."""
        return self.total - self._len

    def add(self, events: list[dict[str, Any]], received_at: float) -> None:
        """Append ``events`` (the list is kept, not copied) and drop the oldest."""
        self.total += len(events)
        if not events or self.limit == 0:
            return
        self._chunks.append((received_at, events))
        self._len += len(events)
        excess = self._len - self.limit
        while excess > 0:
            oldest = self._chunks[0][1]
            if len(oldest) <= excess:
                self._chunks.popleft()
                self._len -= len(oldest)
                excess -= len(oldest)
            else:
                del oldest[:excess]
                self._len -= excess
                excess = 0

    def records(self, start: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Records ``{"event", "received_at"}`` from index ``start`` on."""
        skip = max(0, start - self.first)
        want = self._len if limit is None else limit
        out: list[dict[str, Any]] = []
        for received_at, events in self._chunks:
            if skip >= len(events):
                skip -= len(events)
                continue
            for ev in islice(events, skip, skip + want - len(out)):
                out.append({"event": ev, "received_at": received_at})
            skip = 0
            if len(out) >= want:
                break
        return out

    def clear(self) -> None:
        """Forget every event and reset the index."""
        self._chunks.clear()
        self._len = self.total = 0
