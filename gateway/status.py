"""Local status page and operations API (aiohttp), read-only unless a token is set.

``/`` status page, ``/api/status`` JSON, ``/metrics`` Prometheus text,
``/healthz``, ``/readyz``, ``/api/dead-letters`` (GET), and
``POST /api/dead-letters/replay`` / ``/discard`` which need
``Authorization: Bearer <status token>`` (``status.token_file``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from importlib import resources
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from gateway.config import read_secret

if TYPE_CHECKING:
    from gateway.app import Gateway

log = structlog.get_logger(__name__)

GATEWAY_KEY = web.AppKey("gateway", object)


def _gw(request: web.Request) -> Gateway:
    return request.app[GATEWAY_KEY]  # type: ignore[return-value]


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: store open and every source connection up."""
    gw = _gw(request)
    if gw.ready.is_set():
        return web.json_response({"ready": True})
    return web.json_response({"ready": False, "stopping": gw.stopping}, status=503)


async def api_status(request: web.Request) -> web.Response:
    """The whole snapshot as JSON."""
    return web.json_response(_gw(request).snapshot())


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(snap: dict[str, Any]) -> str:
    """Prometheus text exposition of a snapshot."""
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{labels} {value}")

    store = snap.get("store", {})
    counters = store.get("counters", {})
    com = snap["committer"]
    metric("wh_ready", "gauge", "1 when the gateway is ready", [("", int(snap["ready"]))])
    metric("wh_store_used_bytes", "gauge", "Bytes of events and dead letters in the store",
           [("", store.get("used_bytes", 0))])
    metric("wh_store_max_bytes", "gauge", "Store capacity", [("", store.get("max_bytes", 0))])
    metric("wh_store_file_bytes", "gauge", "Size of the database file and its WAL",
           [("", store.get("file_bytes", 0))])
    metric("wh_store_events", "gauge", "Events held in the store", [("", store.get("events", 0))])
    metric("wh_store_full", "gauge", "1 while the store refuses business events",
           [("", int(com["full"]))])
    metric("wh_events_committed_total", "counter", "Events committed since start",
           [("", com["events"])])
    metric("wh_commits_total", "counter", "Store transactions (group commits)",
           [("", com["commits"])])
    metric("wh_duplicate_events_total", "counter", "Events already in the store (redeliveries)",
           [("", counters.get("duplicate_events", 0))])
    metric("wh_telemetry_evicted_total", "counter", "Telemetry events evicted or dropped",
           [("", counters.get("evicted_telemetry", 0) + counters.get("dropped_telemetry", 0))])
    dls = store.get("dead_letters", {})
    metric("wh_dead_letters", "gauge", "Dead letters held, by kind",
           [(f'{{kind="{k}"}}', v) for k, v in dls.items()])
    sinks = snap["sinks"]
    metric("wh_sink_backlog_events", "gauge", "Events not yet delivered to a sink",
           [(f'{{sink="{_label(s)}"}}', v["backlog_events"] or 0) for s, v in sinks.items()])
    metric("wh_sink_delivered_total", "counter", "Events delivered by a sink",
           [(f'{{sink="{_label(s)}"}}', v["events_delivered"]) for s, v in sinks.items()])
    metric("wh_sink_dead_letters_total", "counter", "Events a sink's upstream rejected",
           [(f'{{sink="{_label(s)}"}}', v["dead_letters"]) for s, v in sinks.items()])
    metric("wh_sink_paused", "gauge",
           "1 while a sink is paused (credentials refused, or replies it cannot interpret)",
           [(f'{{sink="{_label(s)}"}}', int(str(v.get("state", "")).startswith("paused")))
            for s, v in sinks.items()])
    devices = snap["devices"]
    metric("wh_device_connected", "gauge", "1 while the device's connection is up",
           [(f'{{device="{_label(d)}"}}', int(bool(v.get("connected"))))
            for d, v in devices.items()])
    metric("wh_device_messages_total", "counter", "Messages received from a device",
           [(f'{{device="{_label(d)}"}}', _count(v.get("messages", 0)))
            for d, v in devices.items()])
    metric("wh_ingest_errors_total", "counter", "Source messages that could not become signals",
           [(f'{{device="{_label(d)}",kind="{_label(k)}"}}', n)
            for d, v in devices.items() for k, n in v.get("ingest_errors", {}).items()])
    metric("wh_process_rss_bytes", "gauge", "Resident memory of the gateway",
           [("", snap["rss_bytes"])])
    return "\n".join(out) + "\n"


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    return web.Response(text=render_metrics(_gw(request).snapshot()),
                        content_type="text/plain", charset="utf-8")


async def dead_letters(request: web.Request) -> web.Response:
    """List dead letters (``?sink=``, ``?kind=sink|ingest``, ``?after=``, ``?limit=``)."""
    gw = _gw(request)
    q = request.query
    try:
        limit = max(1, min(1000, int(q.get("limit", "100"))))
        after = int(q.get("after", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="limit and after must be integers") from None
    store = gw.service.store
    items = await gw.service.call(store.dead_letters, sink=q.get("sink"), kind=q.get("kind"),
                                  limit=limit, after_id=after)
    return web.json_response({"dead_letters": [
        {"id": d.id, "kind": d.kind, "sink": d.sink, "device": d.device,
         "event_id": d.event_id, "type": d.type, "reason": d.reason, "created": d.created,
         "context": d.context, "body_b64": base64.b64encode(d.body).decode()}
        for d in items
    ]})


def _authorize(request: web.Request) -> None:
    gw = _gw(request)
    path = gw.cfg.status.token_file
    if path is None:
        raise web.HTTPForbidden(
            text="state-changing actions are disabled: set status.token_file in the config"
        )
    expected = f"Bearer {read_secret(path, 'status token')}"
    if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
        raise web.HTTPUnauthorized(text="missing or wrong bearer token")


async def _ids(request: web.Request) -> list[int]:
    try:
        doc = await request.json()
        ids = doc["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids) or not ids:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text='expected JSON {"ids": [1, 2, ...]}') from None
    return ids


async def replay(request: web.Request) -> web.Response:
    """Re-queue sink dead letters for the sink that rejected them."""
    _authorize(request)
    gw = _gw(request)
    ids = await _ids(request)
    from buffer.store import StoreError

    try:
        n = await gw.service.call(gw.service.store.replay, ids)
    except StoreError as err:
        raise web.HTTPBadRequest(text=str(err)) from None
    gw.service.notify()
    log.info("dead_letters_replayed", ids=ids, count=n)
    return web.json_response({"replayed": n})


async def discard(request: web.Request) -> web.Response:
    """Delete dead letters for good."""
    _authorize(request)
    gw = _gw(request)
    ids = await _ids(request)
    n = await gw.service.call(gw.service.store.discard, ids)
    log.info("dead_letters_discarded", ids=ids, count=n)
    return web.json_response({"discarded": n})


async def page(request: web.Request) -> web.Response:
    """The status page."""
    page = resources.files("gateway").joinpath("static/status.html").read_text("utf-8")
    return web.Response(text=page, content_type="text/html", charset="utf-8")


def make_app(gw: Gateway) -> web.Application:
    """The aiohttp application."""
    app = web.Application()
    app[GATEWAY_KEY] = gw
    app.router.add_get("/", page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/dead-letters", dead_letters)
    app.router.add_post("/api/dead-letters/replay", replay)
    app.router.add_post("/api/dead-letters/discard", discard)
    return app


async def serve_status(gw: Gateway) -> None:
    """Serve until cancelled."""
    cfg = gw.cfg.status
    runner = web.AppRunner(make_app(gw), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    log.info("status_listening", url=f"http://{cfg.host}:{cfg.port}/")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _count(value: object) -> int:
    """A message count: a number, or the sum of a per-topic table of numbers."""
    if isinstance(value, dict):
        return sum(n for n in value.values() if isinstance(n, int))
    return value if isinstance(value, int) else 0
