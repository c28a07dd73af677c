"""Reading a source's event history (OPC UA HistoryRead, ReadEventDetails), page by page.

The read runs forward from ``start`` to "now" (no end time); the server hands
back at most ``page`` events per request and a continuation point for the
rest. Each request has its own timeout. A continuation point left unused
(the read was cancelled) is released by the session's end.

A server that keeps no event history for a source (it does not historize the
notifier, or has no history at all) answers with one of ``NO_HISTORY``; that
is raised as ``NoEventHistory`` so the driver can stop asking instead of
treating a permanent answer as a broken session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

#: Answers to an event history read meaning "this server keeps no event history
#: for this source" — permanent, unlike a timeout or a dropped link.
NO_HISTORY: Final[frozenset[int]] = frozenset({
    StatusCodes.BadHistoryOperationInvalid,
    StatusCodes.BadHistoryOperationUnsupported,
    StatusCodes.BadNotReadable,
    StatusCodes.BadServiceUnsupported,
    StatusCodes.BadNotImplemented,
    StatusCodes.BadNotSupported,
})


class NoEventHistory(Exception):
    """The server answered an event history read with one of ``NO_HISTORY``."""

    def __init__(self, status: str) -> None:
        super().__init__(f"the server keeps no event history for this source ({status})")
        #: The status code's name, e.g. ``BadHistoryOperationInvalid``.
        self.status = status


def no_history_status(code: int | None) -> str | None:
    """The name of ``code`` when it means "no event history here", else None."""
    if code is None or code not in NO_HISTORY:
        return None
    return ua.StatusCode(ua.UInt32(code)).name


async def read_event_history(
    client: Client, source: ua.NodeId, evfilter: ua.EventFilter, start: float, page: int,
    request_timeout_s: float,
) -> AsyncIterator[list[list[ua.Variant]]]:
    """Yield the event-field lists of ``source``'s events from ``start`` on, one page at a time.

    Raises ``NoEventHistory`` when the server keeps no event history for ``source``
    (whether it says so in the result or for the whole request).
    """
    details = ua.ReadEventDetails(
        NumValuesPerNode=page,
        StartTime=datetime.fromtimestamp(start, UTC),
        EndTime=ua.get_win_epoch(),
        Filter=evfilter,
    )
    continuation: bytes | None = None
    while True:
        params = ua.HistoryReadParameters(
            HistoryReadDetails=details,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            ReleaseContinuationPoints=False,
            NodesToRead=[ua.HistoryReadValueId(NodeId=source, ContinuationPoint=continuation)],
        )
        try:
            async with asyncio.timeout(request_timeout_s):
                result = (await client.uaclient.history_read(params))[0]
        except UaStatusCodeError as err:  # the service itself refused
            status = no_history_status(err.code)
            if status is None:
                raise
            raise NoEventHistory(status) from None
        status = no_history_status(result.StatusCode.value)
        if status is not None:
            raise NoEventHistory(status)
        result.StatusCode.check()
        data = result.HistoryData
        events = getattr(data, "Events", None) or []
        if events:
            yield [e.EventFields for e in events]
        continuation = result.ContinuationPoint or None
        if not continuation or not events:
            return
