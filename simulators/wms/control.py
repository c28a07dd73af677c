"""The WMS simulator's control API: stats, recorded events and requests, faults.

It is served on a listener of its own (see :meth:`WmsSimulator.start`) so that
it stays reachable while the ingest listener is down for an outage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from simulators.wms.faults import FaultError, Faults, is_number

if TYPE_CHECKING:
    from simulators.wms.server import WmsSimulator

__all__ = ["ControlApi", "error_response"]

_EVENTS_PAGE_MAX = 100_000


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON ``{"error": message}`` answer with ``status``."""
    return web.json_response({"error": message}, status=status, headers=headers)


_error = error_response


class ControlApi:
    """The control routes of one :class:`WmsSimulator`."""

    def __init__(self, sim: WmsSimulator) -> None:
        self._sim = sim

    def add_routes(self, app: web.Application) -> None:
        """Register the control routes on ``app``."""
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/stats", self._handle_stats)
        app.router.add_get("/events", self._handle_events)
        app.router.add_get("/requests", self._handle_requests)
        app.router.add_get("/control/faults", self._handle_get_faults)
        app.router.add_post("/control/faults", self._handle_post_faults)
        app.router.add_post("/control/outage", self._handle_outage)
        app.router.add_post("/control/reset", self._handle_reset)

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._sim.stats())

    async def _handle_events(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return _error(400, "after and limit must be integers")
        if after < 0 or not 0 < limit <= _EVENTS_PAGE_MAX:
            return _error(400, f"need after >= 0 and 0 < limit <= {_EVENTS_PAGE_MAX}")
        # Indexes count every accepted event since reset; when keep_events is
        # exceeded the oldest records are gone, so paging starts at `first`.
        kept = self._sim.event_log
        start = max(after, kept.first)
        page = kept.records(start, limit)
        return web.json_response(
            {"events": page, "total": kept.total, "first": kept.first, "next": start + len(page)}
        )

    async def _handle_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self._sim.requests})

    async def _handle_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._sim.faults.to_dict())

    async def _read_object(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            return _error(400, "body is not valid JSON")
        if type(doc) is not dict:
            return _error(400, "body must be a JSON object")
        return cast(dict[str, Any], doc)

    async def _handle_post_faults(self, request: web.Request) -> web.Response:
        patch = await self._read_object(request)
        if isinstance(patch, web.Response):
            return patch
        try:
            await self._sim.update_faults(patch)
        except FaultError as err:
            return web.json_response({"error": str(err), "key": err.key}, status=400)
        return web.json_response(self._sim.faults.to_dict())

    async def _handle_outage(self, request: web.Request) -> web.Response:
        doc = await self._read_object(request)
        if isinstance(doc, web.Response):
            return doc
        seconds = doc.get("seconds")
        on = doc.get("on")
        if seconds is not None and is_number(seconds) and seconds > 0:
            await self._sim.outage_for(float(seconds))
        elif seconds is None and isinstance(on, bool):
            await self._sim.set_outage(on)
        else:
            return _error(400, 'expected {"seconds": S > 0} or {"on": true|false}')
        return web.json_response({"outage": self._sim.faults.outage, "seconds": seconds})

    async def _handle_reset(self, request: web.Request) -> web.Response:
        doc = await self._read_object(request)
        if isinstance(doc, web.Response):
            return doc
        which = doc.get("faults", "initial")
        if which not in ("initial", "defaults"):
            return _error(400, 'faults must be "initial" or "defaults"')
        await self._sim.reset(Faults() if which == "defaults" else None)
        return web.json_response(self._sim.stats())
