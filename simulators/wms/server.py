"""The WMS simulator's server: listeners, outages, ingest handling and hostile replies."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import random
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, cast

import structlog
from aiohttp import web

from simulators.wms.control import ControlApi
from simulators.wms.control import error_response as _error
from simulators.wms.events import EventLog
from simulators.wms.faults import (
    MALFORMED_REJECTED_VARIANTS,
    Faults,
    HostileMode,
    validate_faults,
)

__all__ = ["LANDING_PATH", "WmsSimulator"]

log = structlog.get_logger("simulators.wms")

LANDING_PATH = "/landing"
_LANDING_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>WMS portal</title></head>\n"
    b"<body><h1>Welcome to the WMS portal</h1><p>Please sign in.</p></body></html>\n"
)
_BAD_GATEWAY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body>"
    b"</html>\n"
)
_STREAM_CHUNK = 64 * 1024

_CLIENT_MAX_SIZE = 256 * 1024 * 1024
_REQUEST_LOG_LEN = 10_000


def _listen_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # The ingest port is reopened after an outage while old connections
        # may still sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _field(event: dict[str, Any], path: tuple[str, ...]) -> object:
    value: object = event
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _matches(rx: re.Pattern[str], path: tuple[str, ...], event: dict[str, Any]) -> bool:
    value = _field(event, path)
    if value is None:
        return False
    text = value if isinstance(value, str) else json.dumps(value)
    return rx.search(text) is not None


class WmsSimulator:
    """The WMS/ERP simulator: ingest and control listeners on loopback."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        path: str = "/api/events",
        faults: Faults | None = None,
        keep_events: int = 1_000_000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.ssl_context = ssl_context
        """Serve the ingest listener over HTTPS with this context (the control API stays HTTP)."""
        self.port = port
        """Ingest port; real once :meth:`start` has bound it (0 picks a free one)."""
        self.control_port = control_port
        """Control port; real once :meth:`start` has bound it (0 picks a free one)."""
        self.path = path
        self.faults = faults if faults is not None else Faults()
        self._initial_faults = dataclasses.replace(self.faults, outage=False)
        self._kept = EventLog(keep_events)
        self._seen: set[str] = set()
        self._received = 0
        self._duplicates = 0
        self._rejected = 0
        self._rejected_requests = 0
        self._hostile_requests = 0
        self._malformed_turn = 0
        self._request_count = 0
        self._status_counts: dict[int, int] = {}
        self._request_log: deque[dict[str, Any]] = deque(maxlen=_REQUEST_LOG_LEN)
        self._rng = random.Random(self.faults.seed)
        self._rng_seed = self.faults.seed
        self._regex_cache: tuple[str, re.Pattern[str]] | None = None
        self._ingest_runner: web.AppRunner | None = None
        self._control_runner: web.AppRunner | None = None
        self._ingest_site: web.SockSite | None = None
        self._outage_lock = asyncio.Lock()
        self._outage_timer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        """The ingest URL, e.g. ``http://127.0.0.1:8081/api/events``."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self._netloc(self.port)}{self.path}"

    @property
    def control_url(self) -> str:
        """The base URL of the control API, e.g. ``http://127.0.0.1:8082``."""
        return f"http://{self._netloc(self.control_port)}"

    def _netloc(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    async def start(self) -> None:
        """Bind both listeners and start serving."""
        ingest = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        ingest.router.add_post(self.path, self._handle_ingest)
        ingest.router.add_get(LANDING_PATH, self._handle_landing)
        control = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        # Targets of the hostile redirects: a landing page that answers a GET
        # (where a followed 302 ends) and the ingest path (where a 307 points).
        control.router.add_get(LANDING_PATH, self._handle_landing)
        control.router.add_post(self.path, self._handle_moved_ingest)
        ControlApi(self).add_routes(control)

        # Short shutdown timeout: a request parked in injected latency must
        # not hold up a test's teardown.
        self._ingest_runner = web.AppRunner(ingest, access_log=None, shutdown_timeout=1.0)
        self._control_runner = web.AppRunner(control, access_log=None, shutdown_timeout=1.0)
        await self._ingest_runner.setup()
        await self._control_runner.setup()
        try:
            sock = _listen_socket(self.host, self.port)
            self.port = sock.getsockname()[1]
            self._ingest_site = web.SockSite(self._ingest_runner, sock,
                                             ssl_context=self.ssl_context)
            await self._ingest_site.start()
            csock = _listen_socket(self.host, self.control_port)
            self.control_port = csock.getsockname()[1]
            await web.SockSite(self._control_runner, csock).start()
        except BaseException:
            await self.stop()
            raise
        if self.faults.outage:
            # Faults(outage=True) means: start as if the WMS were down.
            await self.set_outage(True)
        log.info("wms_started", ingest=self.url, control=self.control_url)

    async def stop(self) -> None:
        """Close both listeners and all connections."""
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None
        for runner in (self._control_runner, self._ingest_runner):
            if runner is not None:
                await runner.cleanup()
        self._control_runner = self._ingest_runner = self._ingest_site = None

    async def __aenter__(self) -> WmsSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- faults ------------------------------------------------------------

    async def set_outage(self, on: bool) -> None:
        """Close (``True``) or reopen (``False``) the ingest listener.

        While closed, connects are refused and open connections are dropped,
        as when the WMS host is down. It reopens on the same port.
        """
        if self._outage_timer is not None and self._outage_timer is not asyncio.current_task():
            self._outage_timer.cancel()
            self._outage_timer = None
        await self._apply_outage(on)

    async def _apply_outage(self, on: bool) -> None:
        async with self._outage_lock:
            runner = self._ingest_runner
            # The listener is the truth: `faults` may have been replaced.
            if runner is None or on == (self._ingest_site is None):
                self.faults.outage = on
                return
            if on:
                if self._ingest_site is not None:
                    await self._ingest_site.stop()
                    self._ingest_site = None
                # Idle keep-alive connections would otherwise still deliver.
                if runner.server is not None:
                    for conn in runner.server.connections:
                        conn.force_close()
            else:
                site = web.SockSite(runner, _listen_socket(self.host, self.port),
                                    ssl_context=self.ssl_context)
                await site.start()
                self._ingest_site = site
            self.faults.outage = on
            log.info("wms_outage", on=on, port=self.port)

    async def outage_for(self, seconds: float) -> None:
        """Start an outage that ends by itself after ``seconds``."""
        await self.set_outage(True)
        self._outage_timer = asyncio.create_task(self._end_outage(seconds), name="wms-outage-end")

    async def _end_outage(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._outage_timer = None
        try:
            await self._apply_outage(False)
        except OSError as err:
            # Nobody awaits this task: say it loudly here instead.
            log.error("wms_reopen_failed", port=self.port, error=str(err))

    async def update_faults(self, patch: Mapping[str, object]) -> None:
        """Validate and apply a partial fault setting, including ``outage``.

        Raises:
            FaultError: naming the bad key; nothing is applied then.
        """
        clean = validate_faults(patch)
        outage = clean.pop("outage", None)
        for key, value in clean.items():
            setattr(self.faults, key, value)
        if outage is not None:
            await self.set_outage(outage)

    async def reset(self, faults: Faults | None = None) -> None:
        """Forget stats, events and requests; restore ``faults`` or the initial ones."""
        await self.set_outage(False)
        source = faults if faults is not None else self._initial_faults
        self.faults = dataclasses.replace(source, outage=False)
        self._kept.clear()
        self._seen.clear()
        self._received = self._duplicates = self._rejected = 0
        self._rejected_requests = self._request_count = 0
        self._hostile_requests = self._malformed_turn = 0
        self._status_counts.clear()
        self._request_log.clear()
        self._rng.seed(self.faults.seed)
        self._rng_seed = self.faults.seed

    # -- observations ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: received, unique, duplicates, rejected, requests, status_counts..."""
        return {
            "received": self._received,
            "unique": len(self._seen),
            "duplicates": self._duplicates,
            "rejected": self._rejected,
            "rejected_requests": self._rejected_requests,
            "hostile_requests": self._hostile_requests,
            "requests": self._request_count,
            "status_counts": {str(k): v for k, v in sorted(self._status_counts.items())},
            "events_kept": len(self._kept),
            "outage": self.faults.outage,
        }

    @property
    def event_log(self) -> EventLog:
        """The accepted events as kept (the control API pages through it)."""
        return self._kept

    @property
    def events(self) -> list[dict[str, Any]]:
        """Accepted event records ``{"event", "received_at"}`` in arrival order."""
        return self._kept.records()

    def accepted_ids(self) -> set[str]:
        """Every ``event_id`` accepted since start or the last reset."""
        return set(self._seen)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The last 10,000 ingest requests, oldest first."""
        return list(self._request_log)

    # -- ingest ------------------------------------------------------------

    async def _handle_ingest(self, request: web.Request) -> web.StreamResponse:
        return await self._ingest(request, hostile_ok=True)

    async def _handle_moved_ingest(self, request: web.Request) -> web.StreamResponse:
        # The ingest path on the control listener: where a 307 points. It never
        # answers with a hostile reply itself, so following the 307 ends here.
        return await self._ingest(request, hostile_ok=False)

    async def _handle_landing(self, request: web.Request) -> web.Response:
        return web.Response(body=_LANDING_PAGE, content_type="text/html")

    async def _ingest(self, request: web.Request, *, hostile_ok: bool) -> web.StreamResponse:
        t = time.monotonic()
        wall = time.time()
        faults = self.faults
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        body = await request.read()
        headers = request.headers
        entry: dict[str, Any] = {
            "t": t,
            "wall": wall,
            "status": 0,
            "events": 0,
            "idempotency_key": headers.get("Idempotency-Key"),
            "authorization": headers.get("Authorization"),
            "bytes": len(body),
        }
        if not hostile_ok:
            entry["listener"] = "control"
        hostile = self._take_hostile(faults, headers.get("Authorization")) if hostile_ok else None
        if hostile is not None:
            entry["hostile"] = hostile
            self._hostile_requests += 1
            return await self._hostile_reply(request, faults, hostile, body, entry)
        response = self._decide(faults, headers.get("Authorization"), body, wall, entry)
        self._record(entry, response.status)
        return response

    def _record(self, entry: dict[str, Any], status: int) -> None:
        entry["status"] = status
        self._request_log.append(entry)
        self._request_count += 1
        self._status_counts[status] = self._status_counts.get(status, 0) + 1

    def _take_hostile(self, faults: Faults, authorization: str | None) -> HostileMode | None:
        """The hostile mode for this request, using up one of its count, or None."""
        if faults.hostile is None or faults.hostile_count == 0:
            return None
        # A wrong token still gets its 401: the hostile reply is the WMS's
        # answer to an authenticated request.
        if faults.token is not None and authorization != f"Bearer {faults.token}":
            return None
        if faults.hostile_count > 0:
            faults.hostile_count -= 1
        return faults.hostile

    async def _hostile_reply(
        self,
        request: web.Request,
        faults: Faults,
        mode: HostileMode,
        body: bytes,
        entry: dict[str, Any],
    ) -> web.StreamResponse:
        if mode == "garbage_2xx":
            response = web.Response(body=_LANDING_PAGE, content_type="text/html")
        elif mode == "malformed_rejected":
            variant = (
                faults.hostile_variant
                or MALFORMED_REJECTED_VARIANTS[
                    self._malformed_turn % len(MALFORMED_REJECTED_VARIANTS)
                ]
            )
            self._malformed_turn += 1
            entry["variant"] = variant
            if variant == "reason_not_string":
                response = self._reject_first(body, float(entry["wall"]), entry)
            else:
                response = web.json_response(_malformed_rejected(variant))
        elif mode == "redirect":
            location = f"{self.control_url}{LANDING_PATH}"
            entry["location"] = location
            response = web.Response(
                status=302, headers={"Location": location}, body=b"", content_type="text/html"
            )
        elif mode == "redirect_307":
            base = self.control_url if faults.hostile_redirect_to == "control" else self.url
            location = base + self.path if faults.hostile_redirect_to == "control" else base
            entry["location"] = location
            response = web.Response(status=307, headers={"Location": location})
        elif mode == "html_5xx":
            response = web.Response(status=502, body=_BAD_GATEWAY_PAGE, content_type="text/html")
        else:
            self._record(entry, 200)
            if mode == "huge_body":
                return await self._stream_huge(request, faults.hostile_body_bytes)
            return await self._stream_endless(request, faults.hostile_interval_ms / 1000)
        self._record(entry, response.status)
        return response

    async def _stream_huge(self, request: web.Request, size: int) -> web.StreamResponse:
        # A valid JSON document when read to the end ({"accepted": 0, ...}):
        # a client that reads it all and believes it is the one in trouble.
        head = b'{"accepted":0,"duplicates":0,"rejected":[],"pad":"'
        tail = b'"}'
        if size < len(head) + len(tail):
            head, tail = b"", b""
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = size
        await response.prepare(request)
        chunk = b"x" * _STREAM_CHUNK
        left = size - len(head) - len(tail)
        try:
            await response.write(head)
            while left > 0:
                n = min(left, _STREAM_CHUNK)
                await response.write(chunk if n == _STREAM_CHUNK else chunk[:n])
                left -= n
            await response.write(tail)
            await response.write_eof()
        except ConnectionError:
            # The client gave up reading: that is what a sane client does.
            log.info("wms_hostile_body_abandoned", sent=size - left)
        return response

    async def _stream_endless(self, request: web.Request, interval: float) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        sent = 0
        try:
            await response.write(b'{"accepted":0,"pad":"')
            while True:
                await asyncio.sleep(interval)
                await response.write(b"x" * 16)
                sent += 16
        except ConnectionError:
            log.info("wms_hostile_body_abandoned", sent=sent)
        return response

    def _decide(
        self,
        faults: Faults,
        authorization: str | None,
        body: bytes,
        wall: float,
        entry: dict[str, Any],
    ) -> web.Response:
        if faults.token is not None and authorization != f"Bearer {faults.token}":
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if faults.force_status is not None and faults.force_status_count != 0:
            if faults.force_status_count > 0:
                faults.force_status_count -= 1
            return _error(faults.force_status, f"forced status {faults.force_status}")
        if faults.max_body_bytes is not None and len(body) > faults.max_body_bytes:
            return _error(413, f"body of {len(body)} bytes exceeds {faults.max_body_bytes}")
        if faults.retry_after_status is not None and faults.retry_after_count != 0:
            if faults.retry_after_count > 0:
                faults.retry_after_count -= 1
            return _error(
                faults.retry_after_status, "try again later", {"Retry-After": faults.retry_after}
            )
        if faults.error_rate > 0:
            if faults.seed != self._rng_seed:
                self._rng.seed(faults.seed)
                self._rng_seed = faults.seed
            if self._rng.random() < faults.error_rate:
                return _error(500, "injected server error")

        events = _parse_events(body)
        if isinstance(events, web.Response):
            return events
        entry["events"] = len(events)

        if faults.reject_pattern is None:
            return self._accept(events, wall, None)
        rx = self._compiled(faults.reject_pattern)
        path = tuple(faults.reject_field.split("."))
        reason = f"{faults.reject_field} matches {faults.reject_pattern!r}"
        if faults.reject_mode != "partial":
            bad = [
                {"event_id": ev["event_id"], "reason": reason}
                for ev in events
                if _matches(rx, path, ev)
            ]
            if bad:
                self._rejected_requests += 1
                return web.json_response(
                    {"error": f"{len(bad)} event(s) rejected", "rejected": bad},
                    status=400 if faults.reject_mode == "batch400" else 422,
                )
            return self._accept(events, wall, None)
        return self._accept(events, wall, functools.partial(_matches, rx, path), reason)

    def _reject_first(self, body: bytes, wall: float, entry: dict[str, Any]) -> web.Response:
        """Accept the batch but its first new event, rejected with a non-string reason."""
        events = _parse_events(body)
        if isinstance(events, web.Response):
            return events
        entry["events"] = len(events)
        first = True

        def reject(ev: dict[str, Any]) -> bool:
            nonlocal first
            was_first, first = first, False
            return was_first

        return self._accept(events, wall, reject, {"code": 17, "text": "tote blocked"})

    def _accept(
        self,
        events: list[dict[str, Any]],
        wall: float,
        reject: Callable[[dict[str, Any]], bool] | None = None,
        reason: object = None,
    ) -> web.Response:
        """Dedup ``events``, reject the new ones ``reject`` is true for (with ``reason``).

        Keeps the rest, counts them by the rules of the module doc and returns
        the 200 answer. Shared by the normal path and the hostile
        ``reason_not_string`` reply, which differ only in whom they reject.
        """
        seen = self._seen
        new: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        duplicates = 0
        if reject is None:
            # The common case, kept free of a call per event: the simulator is
            # the gateway's peer in the throughput benchmarks.
            for ev in events:
                eid = ev["event_id"]
                if eid in seen:
                    duplicates += 1
                else:
                    seen.add(eid)
                    new.append(ev)
        else:
            for ev in events:
                eid = ev["event_id"]
                if eid in seen:
                    duplicates += 1
                elif reject(ev):
                    rejected.append({"event_id": eid, "reason": reason})
                else:
                    seen.add(eid)
                    new.append(ev)
        self._kept.add(new, wall)
        self._received += len(events)
        self._duplicates += duplicates
        self._rejected += len(rejected)
        return web.json_response(
            {"accepted": len(new), "duplicates": duplicates, "rejected": rejected}
        )

    def _compiled(self, pattern: str) -> re.Pattern[str]:
        if self._regex_cache is None or self._regex_cache[0] != pattern:
            self._regex_cache = (pattern, re.compile(pattern))
        return self._regex_cache[1]


def _parse_events(body: bytes) -> list[dict[str, Any]] | web.Response:
    """The events of an ingest body, or the 400 answer saying what is wrong."""
    try:
        doc = json.loads(body)
    except ValueError:
        return _error(400, "body is not valid JSON")
    events = doc.get("events") if type(doc) is dict else None
    if type(events) is not list:
        return _error(400, 'body must be a JSON object with an "events" list')
    for i, ev in enumerate(events):
        if type(ev) is not dict or type(ev.get("event_id")) is not str:
            return _error(400, f"events[{i}] is not an object with a string event_id")
    return cast(list[dict[str, Any]], events)


def _malformed_rejected(variant: str) -> dict[str, Any]:
    """A 200 reply that accepts nothing, its ``rejected`` broken in one way."""
    if variant == "id_list":
        return {"accepted": 0, "rejected": [{"event_id": ["x"], "reason": "bad"}]}
    if variant == "id_object":
        return {"accepted": 0, "rejected": [{"event_id": {"id": "x"}, "reason": "bad"}]}
    return {"accepted": 0, "rejected": "all of them"}  # rejected_not_list
