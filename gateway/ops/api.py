"""The operator routes of the status server: act on dead letters, the audit
trail, reconciliation, container trace, and the page's operator panel.

``POST /api/dead-letters/replay`` and ``/discard`` take ``{"ids": [...]}`` or
``{"all": true, "filter": {"sink", "kind", "reason", "device", "type"}}`` and
need ``Authorization: Bearer <status token>``; each one is written to the
audit trail in the store, with the token's name (``gateway.ops.auth``).
``GET /api/dead-letters/count`` (same filter as the listing),
``GET /api/audit``, ``GET /api/reconciliation?day=YYYY-MM-DD[&format=csv]``,
``GET /api/containers/{id}`` and ``GET /api/auth`` (who a token is) complete
it; ``/ops/panel.js`` (``gateway/static/ops.js``) is the page's panel for them.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import structlog
from aiohttp import web

from buffer.deadletters import DeadLetterFilter
from buffer.ledger import SINK_COUNTS, day_bounds, day_of, report_rows
from gateway.config import StatusConfig
from gateway.ops.auth import authorize

if TYPE_CHECKING:
    from buffer.store import Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Largest SQLite integer (dead letter ids) and most ids per replay/discard request.
MAX_ID: Final = 2**63 - 1
MAX_IDS: Final = 1000
#: Most dead letters one "all matching" request acts on.
MAX_MATCHING: Final = 100_000
#: Header the status page sends, so the audit trail tells the page from the API.
CLIENT_HEADER: Final = "X-Gateway-Client"
FILTER_KEYS: Final = ("sink", "kind", "reason", "device", "type")
_CONTAINER = re.compile(r"[^\x00-\x1f]{1,200}")


class OpsSource(Protocol):
    """What the operator routes need from the gateway process."""

    async def with_store(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store's thread."""
        ...

    def sink_routes(self) -> dict[str, frozenset[str] | None]:
        """Each sink's event types (``None``: all)."""
        ...

    def wake_forwarders(self) -> None:
        """Tell the forwarders new rows are in the store (after a replay)."""
        ...


OPS_SOURCE_KEY = web.AppKey("ops_source", OpsSource)
OPS_CONFIG_KEY = web.AppKey("ops_config", StatusConfig)


def query_filter(q: Any) -> DeadLetterFilter:
    """The dead letter filter of a query string (``kind`` checked)."""
    kind = q.get("kind")
    if kind is not None and kind not in ("sink", "ingest"):
        raise web.HTTPBadRequest(text=f"kind must be 'sink' or 'ingest', got {kind[:40]!r}")
    return DeadLetterFilter(**{k: q.get(k) for k in FILTER_KEYS})


def _body_filter(doc: Any) -> DeadLetterFilter:
    if doc is None:
        return DeadLetterFilter()
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text=f"filter must be an object with some of {FILTER_KEYS}")
    unknown = sorted(set(doc) - set(FILTER_KEYS))
    if unknown:
        raise web.HTTPBadRequest(text=f"filter: unknown key {unknown[0]!r}; expected some of "
                                      f"{', '.join(FILTER_KEYS)}")
    for k, v in doc.items():
        if v is not None and not (isinstance(v, str) and v):
            raise web.HTTPBadRequest(text=f"filter.{k} must be a non-empty string or null")
    return query_filter(doc)


async def _selection(request: web.Request) -> list[int] | DeadLetterFilter:
    """The ids a request names, or the filter of an ``all`` request."""
    usage = (f'expected JSON {{"ids": [1, 2, ...]}} with 1 to {MAX_IDS} dead letter ids '
             f'(integers from 1 to {MAX_ID}), or {{"all": true, "filter": {{...}}}}')
    try:
        doc = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=f"body is not JSON; {usage}") from None
    if isinstance(doc, dict) and doc.get("all") is True and "ids" not in doc:
        extra = sorted(set(doc) - {"all", "filter"})
        if extra:
            raise web.HTTPBadRequest(text=f"unknown key {extra[0]!r}; {usage}")
        return _body_filter(doc.get("filter"))
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS:
        raise web.HTTPBadRequest(text=f"ids missing or not a list of 1 to {MAX_IDS}; {usage}")
    for i in ids:
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= MAX_ID:
            shown = repr(i) if not isinstance(i, int) or i.bit_length() < 100 else "a huge integer"
            raise web.HTTPBadRequest(text=f"ids: {shown[:40]} is not a dead letter id; {usage}")
    return ids


def _via(request: web.Request) -> str:
    return "page" if request.headers.get(CLIENT_HEADER) == "status-page" else "api"


async def _act(request: web.Request, action: str) -> web.Response:
    who = authorize(request, request.app[OPS_CONFIG_KEY])
    chosen = await _selection(request)
    src, via = request.app[OPS_SOURCE_KEY], _via(request)
    from buffer.store import StoreError

    def run(store: Store) -> int:
        if isinstance(chosen, DeadLetterFilter):
            if action == "replay":
                return store.replay_matching(chosen, who=who, via=via, limit=MAX_MATCHING)
            return store.discard_matching(chosen, who=who, via=via, limit=MAX_MATCHING)
        if action == "replay":
            return store.replay(chosen, who=who, via=via)
        return store.discard(chosen, who=who, via=via)

    try:
        n = await src.with_store(run)
    except StoreError as err:
        raise web.HTTPBadRequest(text=str(err)) from None
    if action == "replay" and n:
        src.wake_forwarders()
    shown = chosen.given() if isinstance(chosen, DeadLetterFilter) else {"ids": chosen[:20]}
    log.info(f"dead_letters_{action}ed" if action == "replay" else "dead_letters_discarded",
             who=who, via=via, count=n, **shown)
    return web.json_response({"replayed" if action == "replay" else "discarded": n})


async def replay(request: web.Request) -> web.Response:
    """Re-queue sink dead letters (chosen by id or by filter) for their sink."""
    return await _act(request, "replay")


async def discard(request: web.Request) -> web.Response:
    """Move dead letters (chosen by id or by filter) to the archive."""
    return await _act(request, "discard")


async def count(request: web.Request) -> web.Response:
    """How many dead letters match the filter in the query."""
    flt = query_filter(request.query)
    n = await request.app[OPS_SOURCE_KEY].with_store(lambda s: s.count_dead_letters(flt))
    return web.json_response({"count": n, "filter": flt.given()})


def _limit(q: Any, default: int, most: int) -> int:
    raw = q.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise web.HTTPBadRequest(text=f"limit must be an integer from 1 to {most}")
    return int(raw)


async def audit(request: web.Request) -> web.Response:
    """The audit trail of replays and discards, newest first, and the archive."""
    q = request.query
    limit = _limit(q, 100, 1000)
    before_raw = q.get("before")
    if before_raw is not None and not before_raw.isdigit():
        raise web.HTTPBadRequest(text="before must be an audit id (an integer)")
    before = int(before_raw) if before_raw is not None else None

    def read(store: Store) -> dict[str, Any]:
        return {"audit": store.audit_trail(limit=limit, before_id=before),
                "archive": {"retention_s": store.archive_retention_s,
                            "recent": store.archived(limit=20)}}

    return web.json_response(await request.app[OPS_SOURCE_KEY].with_store(read))


async def reconciliation(request: web.Request) -> web.Response:
    """The day's counts per event type and sink, as JSON or CSV."""
    q = request.query
    day = q.get("day") or day_of(time.time())
    try:
        day_bounds(day)
    except ValueError:
        raise web.HTTPBadRequest(text=f"day must be YYYY-MM-DD, got {day[:40]!r}") from None
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        raise web.HTTPBadRequest(text=f"format must be 'json' or 'csv', got {fmt[:40]!r}")
    src = request.app[OPS_SOURCE_KEY]
    routes = src.sink_routes()
    doc = await src.with_store(lambda s: s.reconciliation(day, routes))
    if fmt == "csv":
        return web.Response(text=reconciliation_csv(doc), content_type="text/csv",
                            charset="utf-8")
    return web.json_response(doc)


def reconciliation_csv(doc: dict[str, Any]) -> str:
    """A reconciliation report as CSV: one row per event type and sink."""
    out = io.StringIO()
    writer = csv.DictWriter(out, ["day", "type", "sink", "accepted", *SINK_COUNTS],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(report_rows(doc))
    return out.getvalue()


async def container(request: web.Request) -> web.Response:
    """A container's (or code's) recent events, oldest first, with where each one is."""
    cid = request.match_info["id"]
    if not _CONTAINER.fullmatch(cid):
        raise web.HTTPBadRequest(text="container id must be 1 to 200 printable characters")
    limit = _limit(request.query, 100, 1000)
    src = request.app[OPS_SOURCE_KEY]
    routes = src.sink_routes()
    doc = await src.with_store(lambda s: s.container_trace(cid, routes=routes, limit=limit))
    return web.json_response(doc)


async def whoami(request: web.Request) -> web.Response:
    """Who the token sent is (the page's login): ``{"who": NAME | null, "enabled": bool}``.

    Always 200 (a wrong token is ``who: null``), so a login attempt is not a
    failed request; ``enabled`` is false when no ``status.token_file`` is set.
    """
    cfg = request.app[OPS_CONFIG_KEY]
    if cfg.token_file is None:
        return web.json_response({"who": None, "enabled": False})
    try:
        who: str | None = authorize(request, cfg)
    except web.HTTPUnauthorized:
        who = None
    return web.json_response({"who": who, "enabled": True})


async def panel_script(request: web.Request) -> web.Response:
    """The operator panel of the status page (dead letters, audit, reconciliation, trace)."""
    text = resources.files("gateway").joinpath("static/ops.js").read_text("utf-8")
    return web.Response(text=text, content_type="text/javascript", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application, source: OpsSource, cfg: StatusConfig) -> None:
    """Register the operator routes on the status server's application."""
    app[OPS_SOURCE_KEY] = source
    app[OPS_CONFIG_KEY] = cfg
    app.router.add_post("/api/dead-letters/replay", replay)
    app.router.add_post("/api/dead-letters/discard", discard)
    app.router.add_get("/api/dead-letters/count", count)
    app.router.add_get("/api/audit", audit)
    app.router.add_get("/api/reconciliation", reconciliation)
    app.router.add_get("/api/containers/{id}", container)
    app.router.add_get("/api/auth", whoami)
    app.router.add_get("/ops/panel.js", panel_script)
