"""Capped exponential backoff with full jitter, for drivers, MQTT links and sinks alike."""

from __future__ import annotations

import random


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
