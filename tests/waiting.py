"""Waiting in tests: poll for a positive signal, and clocks a test moves by hand.

Every test waits through these helpers instead of sleeping and hoping: a
wait ends as soon as the condition holds, and fails with a message naming
what did not happen. The timeouts are failure bounds for a slow, shared
machine, never an expectation of speed; assertions on how long something
took use an injected clock (``ManualClock``) instead of the wall clock.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["ManualClock", "wait_until", "wait_until_sync"]


class ManualClock:
    """A clock (monotonic or wall) that only moves when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds``; return the new time."""
        self.now += seconds
        return self.now


def _timed_out(timeout: float, what: str, state: Callable[[], object] | None) -> AssertionError:
    detail = f"; state: {state()!r}" if state is not None else ""
    return AssertionError(f"timed out after {timeout}s waiting for {what or 'the condition'}"
                          f"{detail}")


async def wait_until(cond: Callable[[], T | Awaitable[T]], timeout: float = 10.0,  # noqa: ASYNC109
                     what: str = "", interval: float = 0.05, *,
                     state: Callable[[], object] | None = None) -> T:
    """Poll ``cond`` (sync or async) until it returns something true; return that.

    Fails with an ``AssertionError`` naming ``what`` (and ``state()``, if
    given, to show where things stood) after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() > deadline:
            raise _timed_out(timeout, what, state)
        await asyncio.sleep(interval)


def wait_until_sync(cond: Callable[[], T], timeout: float = 10.0, what: str = "",
                    interval: float = 0.1, *,
                    ignore: tuple[type[BaseException], ...] = ()) -> T:
    """``wait_until`` for tests without an event loop (blocks the calling thread).

    Exceptions of the types in ``ignore`` (e.g. ``OSError`` while a server is
    still starting) count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except ignore:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, None)
        time.sleep(interval)
