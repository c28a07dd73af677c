"""The status page's own routes: the page, its script, style and icon, and its chart data.

Everything the page needs ships inside the package (``gateway/static/``): no
CDN, so it works on a site network without internet. ``/api/history`` serves
the last hour of rates the charts draw (gateway/history.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

#: Files under /static/ and their content types; nothing else is served from there.
STATIC_FILES: Mapping[str, str] = {
    "status.js": "text/javascript",
    "status.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


def _read(name: str) -> bytes:
    return resources.files("gateway").joinpath("static", name).read_bytes()


def add_page_routes(app: web.Application, history: Callable[[], Mapping[str, Any]]) -> None:
    """Add ``/``, ``/static/<file>``, ``/favicon.ico`` and ``/api/history`` to ``app``."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=_read("status.html"), content_type="text/html",
                            charset="utf-8", headers={"Cache-Control": "no-cache"})

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = STATIC_FILES.get(name)
        if kind is None:
            raise web.HTTPNotFound(text=f"no static file {name[:60]!r}")
        return web.Response(body=_read(name), content_type=kind,
                            charset="utf-8" if kind.startswith("text/") else None,
                            headers={"Cache-Control": "no-cache"})

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(body=_read("favicon.svg"), content_type="image/svg+xml")

    async def api_history(request: web.Request) -> web.Response:
        return web.json_response(history(), headers={"Cache-Control": "no-store"})

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/api/history", api_history)
