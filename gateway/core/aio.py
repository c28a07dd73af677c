"""asyncio helpers every layer may use."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task has a cancellation pending.

    On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives in
    the same loop iteration as the awaited result (fixed in 3.12). pymodbus and
    asyncua await every response with it, so a driver's poll loop (or a
    connection loop) can lose the one ``cancel()`` that was meant to stop it
    and run on forever (a shutdown or a test teardown then hangs). The request stays counted in
    ``Task.cancelling()``: loops call this once per turn to honour it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
