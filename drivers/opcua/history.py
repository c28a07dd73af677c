"""Reading a source's event history (OPC UA HistoryRead, ReadEventDetails), page by page.

The read runs forward from ``start`` to "now" (no end time); the server hands
back at most ``page`` events per request and a continuation point for the
rest. Each request has its own timeout. A continuation point left unused
(the read was cancelled) is released by the session's end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from asyncua import ua
from asyncua.client.client import Client


async def read_event_history(
    client: Client, source: ua.NodeId, evfilter: ua.EventFilter, start: float, page: int,
    request_timeout_s: float,
) -> AsyncIterator[list[list[ua.Variant]]]:
    """Yield the event-field lists of ``source``'s events from ``start`` on, one page at a time."""
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
        async with asyncio.timeout(request_timeout_s):
            result = (await client.uaclient.history_read(params))[0]
        result.StatusCode.check()
        data = result.HistoryData
        events = getattr(data, "Events", None) or []
        if events:
            yield [e.EventFields for e in events]
        continuation = result.ContinuationPoint or None
        if not continuation or not events:
            return
