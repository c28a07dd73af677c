"""The site's control API (loopback HTTP): state, faults, the ledger so far.

``GET /state``, ``GET /ledger`` (the entries as JSON lines), ``POST
/faults/<name>`` with a JSON body (see ``simulators.site.flow.FAULTS`` and
docs/simulators.md).
"""

from __future__ import annotations

import json

from aiohttp import web

from simulators.control_http import json_body, serve_app
from simulators.site.flow import FAULTS, Site

__all__ = ["ControlServer"]


class ControlServer:
    """Serves the control API of one :class:`Site`."""

    def __init__(self, site: Site, host: str = "127.0.0.1", port: int = 0) -> None:
        self.site = site
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve."""
        app = web.Application()
        app.router.add_get("/state", self._state)
        app.router.add_get("/ledger", self._ledger)
        app.router.add_post("/faults/{name}", self._fault)
        self._runner, self.port = await serve_app(app, self.host, self.port)

    async def stop(self) -> None:
        """Close the listener."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.site.state())

    async def _ledger(self, request: web.Request) -> web.Response:
        text = "".join(json.dumps(e.to_json(), separators=(",", ":")) + "\n"
                       for e in self.site.ledger.entries)
        return web.Response(text=text, content_type="application/x-ndjson")

    async def _fault(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FAULTS:
            raise web.HTTPNotFound(text=f"unknown fault {name!r}; expected one of "
                                        f"{', '.join(FAULTS)}")
        body = await json_body(request)
        try:
            result = await self.site.fault(name, body)
        except (KeyError, TypeError, ValueError) as err:
            raise web.HTTPBadRequest(text=f"{name}: {err}") from None
        return web.json_response(result)
