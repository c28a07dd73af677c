"""Local status page and operations API (aiohttp), read-only unless a token is set.

``/`` status page, ``/api/status`` JSON, ``/metrics`` Prometheus text,
``/healthz``, ``/readyz``, ``/api/dead-letters`` (GET, paged and streamed), and
``POST /api/dead-letters/replay`` / ``/discard`` which need
``Authorization: Bearer <status token>`` (``status.token_file``). When the
server listens beyond loopback (``status.host`` not a loopback address),
dead letter bodies need that token too.

The server knows the gateway only through ``StatusSource``: a typed
``GatewaySnapshot`` (gateway/core/snapshot.py; ``/metrics`` is rendered from
it by gateway/metrics.py), readiness, and the few store calls the dead letter
endpoints need.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
from typing import Any, Protocol

import structlog
from aiohttp import web

from gateway.config import StatusConfig
from gateway.core.config import read_secret
from gateway.core.records import DeadLetter, dead_letter_json
from gateway.core.snapshot import GatewaySnapshot
from gateway.history import History
from gateway.metrics import CONTENT_TYPE, render_metrics
from gateway.status_page import add_page_routes

log = structlog.get_logger(__name__)


class StatusSource(Protocol):
    """What the status server needs from the gateway process."""

    #: Set while the gateway is ready (``/readyz``).
    ready: asyncio.Event
    #: True once shutdown began.
    stopping: bool
    #: The last hour of rates (the page's charts).
    history: History

    def snapshot(self) -> GatewaySnapshot:
        """Everything the status page and metrics show."""
        ...

    async def dead_letters(self, *, sink: str | None, kind: str | None, limit: int,
                           after_id: int) -> list[DeadLetter]:
        """Dead letters after ``after_id``, oldest first."""
        ...

    async def replay_dead_letters(self, ids: list[int]) -> int:
        """Re-queue sink dead letters; raises ``StoreError`` naming a bad id."""
        ...

    async def discard_dead_letters(self, ids: list[int]) -> int:
        """Delete dead letters for good."""
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
#: Largest SQLite integer (dead letter ids) and most ids per replay/discard request.
MAX_ID = 2**63 - 1
MAX_IDS = 1000
_DIGITS = re.compile(r"[0-9]{1,19}")
_DEAD_LETTER_PARAMS = ("after", "limit", "kind", "sink", "bodies")


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


def is_loopback_host(host: str) -> bool:
    """True when a listen address only accepts connections from this machine.

    ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``, also
    IPv4-mapped) are; wildcards (``0.0.0.0``, ``::``, empty), LAN addresses and
    any other host name (it may resolve to anything) are not.
    """
    name = host.strip().rstrip(".").lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


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
    kind = q.get("kind")
    if kind is not None and kind not in ("sink", "ingest"):
        raise web.HTTPBadRequest(text=f"kind must be 'sink' or 'ingest', got {kind[:40]!r}")
    sink = q.get("sink")
    bodies = _bool_param(q, "bodies", True)
    if bodies and not is_loopback_host(cfg.host):
        _authorize(request, action="dead letter bodies")

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
        items = await src.dead_letters(sink=sink, kind=kind, limit=want, after_id=cursor)
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


def _authorize(request: web.Request, action: str = "state-changing actions") -> None:
    cfg = request.app[CONFIG_KEY]
    path = cfg.token_file
    if path is None:
        if action == "state-changing actions":
            text = "state-changing actions are disabled: set status.token_file in the config"
        else:
            text = (f"{action} are refused: the status server listens beyond loopback "
                    f"(status.host = {cfg.host!r}) and no status.token_file is set; "
                    "set one and send Authorization: Bearer <token>, or ask with ?bodies=0")
        raise web.HTTPForbidden(text=text)
    try:
        expected = f"Bearer {read_secret(path, 'status token')}"
    except ValueError as err:
        log.error("status_token_unreadable", path=str(path), error=str(err))
        raise web.HTTPServiceUnavailable(text=str(err)) from None
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                               expected.encode()):
        raise web.HTTPUnauthorized(text="missing or wrong bearer token")


async def _ids(request: web.Request) -> list[int]:
    usage = (f'expected JSON {{"ids": [1, 2, ...]}} with 1 to {MAX_IDS} dead letter ids '
             f"(integers from 1 to {MAX_ID})")
    try:
        doc = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=f"body is not JSON; {usage}") from None
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS:
        raise web.HTTPBadRequest(text=f"ids missing or not a list of 1 to {MAX_IDS}; {usage}")
    for i in ids:
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= MAX_ID:
            shown = repr(i) if not isinstance(i, int) or i.bit_length() < 100 else "a huge integer"
            raise web.HTTPBadRequest(text=f"ids: {shown[:40]} is not a dead letter id; {usage}")
    return ids


async def replay(request: web.Request) -> web.Response:
    """Re-queue sink dead letters for the sink that rejected them."""
    _authorize(request)
    ids = await _ids(request)
    from buffer.store import StoreError

    try:
        n = await _source(request).replay_dead_letters(ids)
    except StoreError as err:
        raise web.HTTPBadRequest(text=str(err)) from None
    log.info("dead_letters_replayed", ids=ids, count=n)
    return web.json_response({"replayed": n})


async def discard(request: web.Request) -> web.Response:
    """Delete dead letters for good."""
    _authorize(request)
    ids = await _ids(request)
    n = await _source(request).discard_dead_letters(ids)
    log.info("dead_letters_discarded", ids=ids, count=n)
    return web.json_response({"discarded": n})


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
    app.router.add_get("/api/dead-letters", dead_letters)
    app.router.add_post("/api/dead-letters/replay", replay)
    app.router.add_post("/api/dead-letters/discard", discard)
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
        runner = web.AppRunner(make_app(self.source, self.cfg), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.cfg.host, self.cfg.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("status_listening", url=f"http://{self.cfg.host}:{self.cfg.port}/")

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
