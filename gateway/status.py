"""Local status page and operations API (aiohttp), read-only unless a token is set.

``/`` status page, ``/api/status`` JSON, ``/metrics`` Prometheus text,
``/healthz``, ``/readyz``, ``/api/dead-letters`` (GET, paged and streamed), and
``POST /api/dead-letters/replay`` / ``/discard`` which need
``Authorization: Bearer <status token>`` (``status.token_file``). When the
server listens beyond loopback (``status.host`` not a loopback address),
dead letter bodies need that token too.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import re
from importlib import resources
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from gateway.core.config import read_secret

if TYPE_CHECKING:
    from gateway.app import Gateway

log = structlog.get_logger(__name__)

GATEWAY_KEY = web.AppKey("gateway", object)

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
    metric("wh_store_used_bytes", "gauge", "Bytes of events in the store (against max_bytes)",
           [("", store.get("used_bytes", 0))])
    metric("wh_store_dead_letter_bytes", "gauge", "Bytes of dead letters (own budget)",
           [("", store.get("dead_letter_bytes", 0))])
    metric("wh_store_disk_room_bytes", "gauge",
           "Free disk space plus the store file's free pages",
           [("", store.get("disk_room_bytes", 0))])
    metric("wh_store_disk_low", "gauge", "1 while disk room is below store.min_free_bytes",
           [("", int(bool(store.get("disk_low", False))))])
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
    tasks = snap.get("tasks", {})
    metric("wh_task_restarts_total", "counter",
           "Times a gateway task failed unexpectedly and was restarted",
           [(f'{{task="{_label(t)}"}}', v.get("restarts", 0)) for t, v in tasks.items()])
    # One series per MQTT connection: devices sharing a connection repeat its count.
    takeovers = {v["client_id"]: v["session_takeovers"]
                 for v in [*devices.values(), *sinks.values()] if "session_takeovers" in v}
    metric("wh_mqtt_session_takeovers_total", "counter",
           "MQTT connections lost to another client using the same client id",
           [(f'{{client_id="{_label(c)}"}}', n) for c, n in takeovers.items()])
    metric("wh_process_rss_bytes", "gauge", "Resident memory of the gateway",
           [("", snap["rss_bytes"])])
    return "\n".join(out) + "\n"


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    return web.Response(text=render_metrics(_gw(request).snapshot()),
                        content_type="text/plain", charset="utf-8")


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


def _json_default(value: object) -> str:
    # Contexts are msgpack maps; a peer's bytes in one must not break the listing.
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    return repr(value)


async def dead_letters(request: web.Request) -> web.StreamResponse:
    """List dead letters, oldest first, one bounded page per request.

    Query: ``after`` (id, default 0), ``limit`` (1..500, default 100),
    ``kind`` (``sink``/``ingest``), ``sink``, ``bodies`` (``0`` leaves the
    bodies out). A page holds at most ``limit`` items and about
    ``PAGE_MAX_BYTES`` of them; ``next_after`` is the ``after`` of the next
    page, ``null`` on the last. The page is streamed as it is read from the
    store, a few items at a time, so memory does not grow with its size.
    """
    gw = _gw(request)
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
    if bodies and not is_loopback_host(gw.cfg.status.host):
        _authorize(request, action="dead letter bodies")
    store = gw.service.store

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
        items = await gw.service.call(store.dead_letters, sink=sink, kind=kind,
                                      limit=want, after_id=cursor)
        exhausted = len(items) < want
        biggest = max((len(d.body) for d in items), default=0)
        chunk = max(1, min(READ_CHUNK_MAX, READ_CHUNK_BYTES // max(1, biggest)))
        for d in items:
            doc: dict[str, Any] = {
                "id": d.id, "kind": d.kind, "sink": d.sink, "device": d.device,
                "event_id": d.event_id, "type": d.type, "reason": d.reason,
                "created": d.created, "context": d.context, "body_bytes": len(d.body)}
            if bodies:
                doc["body_b64"] = base64.b64encode(d.body).decode()
            data = json.dumps(doc, default=_json_default).encode()
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
    gw = _gw(request)
    path = gw.cfg.status.token_file
    if path is None:
        if action == "state-changing actions":
            text = "state-changing actions are disabled: set status.token_file in the config"
        else:
            text = (f"{action} are refused: the status server listens beyond loopback "
                    f"(status.host = {gw.cfg.status.host!r}) and no status.token_file is set; "
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
    try:
        # Inside the try: a failed bind (port in use) is retried by the
        # supervisor, and each attempt must release its runner.
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        log.info("status_listening", url=f"http://{cfg.host}:{cfg.port}/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _count(value: object) -> int:
    """A message count: a number, or the sum of a per-topic table of numbers."""
    if isinstance(value, dict):
        return sum(n for n in value.values() if isinstance(n, int))
    return value if isinstance(value, int) else 0
