"""Local status page and operations API (aiohttp), read-only unless a token is set.

``/`` status page, ``/api/status`` JSON, ``/metrics`` Prometheus text,
``/healthz``, ``/readyz``, ``/api/dead-letters`` (GET, paged and streamed,
filtered by sink, kind, reason, device and type), and the operator routes of
``gateway.ops.api`` (replay, discard, audit, reconciliation, container trace;
state changes need ``Authorization: Bearer <status token>``,
``status.token_file``). When the
server listens beyond loopback (``status.host`` not a loopback address),
dead letter bodies need that token too.

The server knows the gateway only through ``StatusSource``: a typed
``GatewaySnapshot`` (gateway/core/snapshot.py; ``/metrics`` is rendered from
it by gateway/metrics.py), readiness, and the store (``with_store``).
"""

from __future__ import annotations

import asyncio
import functools
import re
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from aiohttp import web

from buffer.deadletters import DeadLetterFilter
from gateway.config import StatusConfig
from gateway.core.config import is_loopback_host
from gateway.core.records import DeadLetter, dead_letter_json
from gateway.core.snapshot import GatewaySnapshot
from gateway.core.tls import server_context
from gateway.history import History
from gateway.metrics import CONTENT_TYPE, render_metrics
from gateway.ops.api import FILTER_KEYS, OpsSource, query_filter
from gateway.ops.api import add_routes as add_ops_routes
from gateway.ops.auth import authorize
from gateway.status_page import add_page_routes

if TYPE_CHECKING:
    from buffer.store import Store

log = structlog.get_logger(__name__)


class StatusSource(OpsSource, Protocol):
    """What the status server needs from the gateway process (the store through
    ``OpsSource.with_store``)."""

    #: Set while the gateway is ready (``/readyz``).
    ready: asyncio.Event
    #: True once shutdown began.
    stopping: bool
    #: The last hour of rates (the page's charts).
    history: History

    def snapshot(self) -> GatewaySnapshot:
        """Everything the status page and metrics show."""
        ...


SOURCE_KEY = web.AppKey("source", StatusSource)
CONFIG_KEY = web.AppKey("config", StatusConfig)

#: Dead letters per page: default and most a client may ask for.
PAGE_LIMIT_DEFAULT = 100
PAGE_LIMIT_MAX = 500
#: Bytes of serialized items per page (bodies included); a single larger item
#: still goes out alone on its page so paging always moves on.
PAGE_MAX_BYTES = 4 * 1024 * 1024
#: Body bytes read from the store per call, so memory does not grow with the page.
READ_CHUNK_BYTES = 1024 * 1024
READ_CHUNK_MAX = 16
#: Largest SQLite integer (dead letter ids).
MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")
_DEAD_LETTER_PARAMS = ("after", "limit", "bodies", *FILTER_KEYS)


def _source(request: web.Request) -> StatusSource:
    return request.app[SOURCE_KEY]


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: store open and every source connection up."""
    src = _source(request)
    if src.ready.is_set():
        return web.json_response({"ready": True})
    return web.json_response({"ready": False, "stopping": src.stopping}, status=503)


async def api_status(request: web.Request) -> web.Response:
    """The whole snapshot as JSON."""
    return web.json_response(_source(request).snapshot().to_json())


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    return web.Response(body=render_metrics(_source(request).snapshot()).encode(),
                        headers={"Content-Type": CONTENT_TYPE})


def _int_param(q: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise web.HTTPBadRequest(
            text=f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}")
    return int(raw)


def _bool_param(q: Any, name: str, default: bool) -> bool:
    raw = q.get(name)
    if raw is None:
        return default
    value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if raw.lower() not in value:
        raise web.HTTPBadRequest(text=f"{name} must be 0 or 1, got {raw[:40]!r}")
    return value[raw.lower()]


async def dead_letters(request: web.Request) -> web.StreamResponse:
    """List dead letters, oldest first, one bounded page per request.

    Query: ``after`` (id, default 0), ``limit`` (1..500, default 100),
    ``kind`` (``sink``/``ingest``), ``sink``, ``bodies`` (``0`` leaves the
    bodies out). A page holds at most ``limit`` items and about
    ``PAGE_MAX_BYTES`` of them; ``next_after`` is the ``after`` of the next
    page, ``null`` on the last. The page is streamed as it is read from the
    store, a few items at a time, so memory does not grow with its size.
    """
    src, cfg = _source(request), request.app[CONFIG_KEY]
    q = request.query
    unknown = sorted(set(q) - set(_DEAD_LETTER_PARAMS))
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown parameter {unknown[0]!r}; expected "
                                      f"{', '.join(_DEAD_LETTER_PARAMS)}")
    after = _int_param(q, "after", 0, 0, MAX_ID)
    limit = _int_param(q, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    flt = query_filter(q)
    bodies = _bool_param(q, "bodies", True)
    if bodies and not is_loopback_host(cfg.host):
        authorize(request, cfg, action="dead letter bodies")

    resp = web.StreamResponse(headers={"Cache-Control": "no-store"})
    resp.content_type = "application/json"
    resp.charset = "utf-8"
    await resp.prepare(request)
    await resp.write(b'{"dead_letters":[')
    cursor, written, page_bytes = after, 0, 0
    chunk, more, exhausted = 4, False, False
    while not (more or exhausted):
        # One item past the limit tells whether another page follows.
        want = min(chunk, limit - written + 1)
        items = await src.with_store(functools.partial(
            _read_dead_letters, flt=flt, limit=want, after_id=cursor))
        exhausted = len(items) < want
        biggest = max((len(d.body) for d in items), default=0)
        chunk = max(1, min(READ_CHUNK_MAX, READ_CHUNK_BYTES // max(1, biggest)))
        for d in items:
            data = dead_letter_json(d, bodies=bodies).encode()
            if written >= limit or (written and page_bytes + len(data) > PAGE_MAX_BYTES):
                more = True
                break
            await resp.write(data if not written else b"," + data)
            written += 1
            page_bytes += len(data)
            cursor = d.id
        del items
    await resp.write(b'],"next_after":' + (str(cursor).encode() if more else b"null") + b"}")
    await resp.write_eof()
    return resp


def _read_dead_letters(store: Store, *, flt: DeadLetterFilter, limit: int,
                       after_id: int) -> list[DeadLetter]:
    return store.dead_letters(sink=flt.sink, kind=flt.kind, reason=flt.reason,
                              device=flt.device, type=flt.type, limit=limit, after_id=after_id)


async def schema(request: web.Request) -> web.Response:
    """The JSON Schema of ``wh.event.v1`` (the file shipped in the package)."""
    text = resources.files("gateway").joinpath("schema/wh.event.v1.json").read_text("utf-8")
    return web.Response(text=text, content_type="application/schema+json", charset="utf-8")


def make_app(source: StatusSource, cfg: StatusConfig) -> web.Application:
    """The aiohttp application."""
    app = web.Application()
    app[SOURCE_KEY] = source
    app[CONFIG_KEY] = cfg
    add_page_routes(app, lambda: source.history.to_json())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/schema", schema)
    app.router.add_get("/api/dead-letters", dead_letters)
    add_ops_routes(app, source, cfg)
    return app


class StatusServer:
    """The status server: bound once at start-up, then served by a supervised task.

    ``start`` binds the listening socket and raises ``OSError`` (a port in use)
    for the caller to report; the gateway calls it before starting any task, so
    a start-up failure is one line, not a retried task. ``serve`` serves until
    cancelled; a later restart (after a failure) binds again and is supervised.
    """

    def __init__(self, source: StatusSource, cfg: StatusConfig) -> None:
        self.source = source
        self.cfg = cfg
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and listen; raise ``OSError`` when the address cannot be bound."""
        c = self.cfg
        tls = (server_context(c.cert_file, c.key_file, c.key_password_file)
               if c.cert_file is not None and c.key_file is not None else None)
        runner = web.AppRunner(make_app(self.source, c), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, c.host, c.port, ssl_context=tls).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        scheme = "https" if tls is not None else "http"
        log.info("status_listening", url=f"{scheme}://{c.host}:{c.port}/")

    async def serve(self) -> None:
        """Serve until cancelled (binding first unless ``start`` did)."""
        if self._runner is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            runner, self._runner = self._runner, None
            if runner is not None:
                await runner.cleanup()

    async def close(self) -> None:
        """Release the socket of a server that was started but never served."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def serve_status(source: StatusSource, cfg: StatusConfig) -> None:
    """Serve until cancelled."""
    await StatusServer(source, cfg).serve()
