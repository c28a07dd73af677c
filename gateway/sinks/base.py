"""What a forwarder needs from a sink."""

from __future__ import annotations

import random
from typing import Any, Protocol

from buffer.store import Row, SinkDeadLetter


class Sink(Protocol):
    """An upstream destination.

    ``deliver`` returns only once every row is either delivered or
    permanently rejected (returned as dead letters); it retries transient
    failures itself, forever, and is cancellable at any await.
    """

    id: str
    routes: frozenset[str] | None
    batch_max: int

    async def run(self) -> None:
        """Background work (connections); runs until cancelled."""

    async def deliver(self, rows: list[Row]) -> list[SinkDeadLetter]:
        """Deliver ``rows`` (in ``seq`` order); return the permanently rejected ones."""
        ...

    async def close(self) -> None:
        """Release connections."""

    def snapshot(self) -> dict[str, Any]:
        """State for the status API."""
        ...


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next delay: uniform in [0, min(cap, initial * 2**attempt)]."""
        ceiling = self.ceiling()
        self.attempt += 1
        return float(self._rng.uniform(0, ceiling))

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.initial * float(2 ** min(self.attempt, 32)))

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self.attempt = 0
