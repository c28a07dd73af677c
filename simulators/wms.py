"""WMS/ERP simulator: an HTTP server speaking the gateway's upstream contract.

The ingest listener takes ``POST <path>`` with ``{"events": [...]}``, dedups by
``event_id`` and records what it accepted. Faults (outage, errors, Retry-After,
latency, rejections, auth, size limits) are injected on request, in process
(:class:`Faults`, :meth:`WmsSimulator.set_outage`) or over the control API.

The control API (stats, recorded events, faults) has a listener of its own so
that it stays reachable while the ingest listener is down for an outage.

Hostile faults (``Faults.hostile``) rehearse a misbehaving WMS: a 200 whose
body is an HTML page or a malformed ``rejected`` list, redirects, a huge or an
endless body, an HTML 502. The huge and endless bodies are generated while
streaming, never held in memory.

Counting rules: ``received`` counts the events of requests that the normal
ingest path answered 2xx; each of them is then exactly one of new (``unique``
grows), duplicate (its ``event_id`` was accepted before) or rejected by the
reject rule, so ``duplicates == received - unique - rejected``. A hostile
reply accepts nothing, whatever its status (a 200 with a garbage body
included): it only counts in ``requests``, ``status_counts`` and
``hostile_requests``, so ``unique`` and ``received`` are exactly what the
simulator really accepted. Two replies are true to what they say and count
by the normal rules: a request that a 307 sends to the ingest path on the
control listener is accepted there, and the ``reason_not_string`` variant of
``malformed_rejected`` (a well-formed partial rejection but for the type of
its reason, which the upstream contract reads as such) really accepts the
batch but its first new event, counted in ``rejected``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import structlog
from aiohttp import web

__all__ = ["FaultError", "Faults", "WmsSimulator", "add_arguments", "run", "validate_faults"]

log = structlog.get_logger(__name__)

RejectMode = Literal["partial", "batch400", "batch422"]
_REJECT_MODES: tuple[RejectMode, ...] = ("partial", "batch400", "batch422")

HostileMode = Literal[
    "garbage_2xx",
    "malformed_rejected",
    "redirect",
    "redirect_307",
    "huge_body",
    "endless_body",
    "html_5xx",
]
_HOSTILE_MODES: tuple[HostileMode, ...] = (
    "garbage_2xx",
    "malformed_rejected",
    "redirect",
    "redirect_307",
    "huge_body",
    "endless_body",
    "html_5xx",
)
RedirectTarget = Literal["control", "self"]
_REDIRECT_TARGETS: tuple[RedirectTarget, ...] = ("control", "self")

#: Variants of ``malformed_rejected``, used in turn (one per hostile request)
#: unless ``Faults.hostile_variant`` names one.
MALFORMED_REJECTED_VARIANTS: tuple[str, ...] = (
    "id_list",
    "id_object",
    "rejected_not_list",
    "reason_not_string",
)
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
_EVENTS_PAGE_MAX = 100_000


@dataclasses.dataclass(slots=True)
class Faults:
    """Faults the simulator injects; mutable while it runs.

    Counts (``retry_after_count``, ``force_status_count``, ``hostile_count``)
    are decremented per affected request; ``-1`` means every request until changed. ``outage`` only
    reflects the listener state: change it with :meth:`WmsSimulator.set_outage`.
    """

    outage: bool = False
    error_rate: float = 0.0
    retry_after_status: int | None = None
    retry_after: str = "1"
    retry_after_count: int = 1
    latency_ms: float = 0.0
    reject_pattern: str | None = None
    reject_field: str = "event_id"
    reject_mode: RejectMode = "partial"
    token: str | None = None
    force_status: int | None = None
    force_status_count: int = 1
    max_body_bytes: int | None = None
    hostile: HostileMode | None = None
    hostile_count: int = 1
    hostile_body_bytes: int = 1024**3
    hostile_redirect_to: RedirectTarget = "control"
    hostile_variant: str | None = None
    hostile_interval_ms: float = 100.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the faults as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def update(self, patch: Mapping[str, object]) -> None:
        """Validate ``patch`` as a whole, then apply it (all or nothing).

        Raises:
            FaultError: naming the first bad key.
        """
        for key, value in validate_faults(patch).items():
            setattr(self, key, value)


class FaultError(ValueError):
    """A fault setting that does not exist or has a value of the wrong kind."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"fault {key!r}: {reason}")
        self.key = key
        self.reason = reason


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check(
    ok: Callable[[Any], bool], expected: str, convert: Callable[[Any], Any] = lambda v: v
) -> Callable[[object], object]:
    def check(value: object) -> object:
        if not ok(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return convert(value)

    return check


def _optional(inner: Callable[[object], object]) -> Callable[[object], object]:
    return lambda v: None if v is None else inner(v)


def _regex(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(f"expected a regular expression string, got {value!r}")
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"invalid regular expression: {err}") from None
    return value


_FAULT_CHECKS: dict[str, Callable[[object], object]] = {
    "outage": _check(lambda v: isinstance(v, bool), "true or false"),
    "error_rate": _check(lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1", float),
    "retry_after_status": _optional(_check(lambda v: _is_int(v) and v in (429, 503), "429 or 503")),
    "retry_after": _check(
        lambda v: (isinstance(v, str) and v.strip() != "") or (_is_int(v) and v >= 0),
        "seconds or an HTTP-date",
        lambda v: str(v).strip(),
    ),
    "retry_after_count": _check(lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "latency_ms": _check(lambda v: _is_number(v) and v >= 0, "a number >= 0", float),
    "reject_pattern": _optional(_regex),
    "reject_field": _check(lambda v: isinstance(v, str) and v != "", "a dotted field path"),
    "reject_mode": _check(lambda v: v in _REJECT_MODES, "|".join(_REJECT_MODES)),
    "token": _optional(_check(lambda v: isinstance(v, str) and v != "", "a non-empty string")),
    "force_status": _optional(_check(lambda v: _is_int(v) and 200 <= v <= 599, "a status 200-599")),
    "force_status_count": _check(lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "max_body_bytes": _optional(_check(lambda v: _is_int(v) and v >= 0, "an integer >= 0")),
    "hostile": _optional(_check(lambda v: v in _HOSTILE_MODES, "|".join(_HOSTILE_MODES))),
    "hostile_count": _check(lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "hostile_body_bytes": _check(lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "hostile_redirect_to": _check(lambda v: v in _REDIRECT_TARGETS, "|".join(_REDIRECT_TARGETS)),
    "hostile_variant": _optional(
        _check(lambda v: v in MALFORMED_REJECTED_VARIANTS, "|".join(MALFORMED_REJECTED_VARIANTS))
    ),
    "hostile_interval_ms": _check(
        lambda v: _is_number(v) and 0 < v <= 60_000, "a number > 0 and <= 60000", float
    ),
    "seed": _check(_is_int, "an integer"),
}


def validate_faults(patch: Mapping[str, object]) -> dict[str, Any]:
    """Check a partial fault setting and return it normalised.

    Raises:
        FaultError: for an unknown key or a value of the wrong kind.
    """
    clean: dict[str, Any] = {}
    for key, value in patch.items():
        check = _FAULT_CHECKS.get(key)
        if check is None:
            raise FaultError(key, f"unknown fault; known: {', '.join(_FAULT_CHECKS)}")
        try:
            clean[key] = check(value)
        except ValueError as err:
            raise FaultError(key, str(err)) from None
    return clean


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


def _matches(rx: re.Pattern[str], event: dict[str, Any], path: tuple[str, ...]) -> bool:
    value = _field(event, path)
    if value is None:
        return False
    text = value if isinstance(value, str) else json.dumps(value)
    return rx.search(text) is not None


class _EventLog:
    """Accepted events in arrival order, the newest ``limit`` of them.

    Kept as one ``(received_at, events)`` chunk per request rather than a
    record per event: with a million events kept, the garbage collector's
    walks over per-event tuples cost as much as ingesting them.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.total = 0
        """Events ever added; the index of the next one."""
        self._chunks: deque[tuple[float, list[dict[str, Any]]]] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def first(self) -> int:
        """Index of the oldest event still kept."""
        return self.total - self._len

    def add(self, events: list[dict[str, Any]], received_at: float) -> None:
        """Append ``events`` (the list is kept, not copied) and drop the oldest."""
        self.total += len(events)
        if not events or self.limit == 0:
            return
        self._chunks.append((received_at, events))
        self._len += len(events)
        excess = self._len - self.limit
        while excess > 0:
            oldest = self._chunks[0][1]
            if len(oldest) <= excess:
                self._chunks.popleft()
                self._len -= len(oldest)
                excess -= len(oldest)
            else:
                del oldest[:excess]
                self._len -= excess
                excess = 0

    def records(self, start: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Records ``{"event", "received_at"}`` from index ``start`` on."""
        skip = max(0, start - self.first)
        want = self._len if limit is None else limit
        out: list[dict[str, Any]] = []
        for received_at, events in self._chunks:
            if skip >= len(events):
                skip -= len(events)
                continue
            for ev in islice(events, skip, skip + want - len(out)):
                out.append({"event": ev, "received_at": received_at})
            skip = 0
            if len(out) >= want:
                break
        return out

    def clear(self) -> None:
        """Forget every event and reset the index."""
        self._chunks.clear()
        self._len = self.total = 0


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


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
    ) -> None:
        self.host = host
        self.port = port
        """Ingest port; real once :meth:`start` has bound it (0 picks a free one)."""
        self.control_port = control_port
        """Control port; real once :meth:`start` has bound it (0 picks a free one)."""
        self.path = path
        self.faults = faults if faults is not None else Faults()
        self._initial_faults = dataclasses.replace(self.faults, outage=False)
        self._kept = _EventLog(keep_events)
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
        return f"http://{self._netloc(self.port)}{self.path}"

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
        control.router.add_get("/healthz", self._handle_healthz)
        control.router.add_get("/stats", self._handle_stats)
        control.router.add_get("/events", self._handle_events)
        control.router.add_get("/requests", self._handle_requests)
        control.router.add_get("/control/faults", self._handle_get_faults)
        control.router.add_post("/control/faults", self._handle_post_faults)
        control.router.add_post("/control/outage", self._handle_outage)
        control.router.add_post("/control/reset", self._handle_reset)

        # Short shutdown timeout: a request parked in injected latency must
        # not hold up a test's teardown.
        self._ingest_runner = web.AppRunner(ingest, access_log=None, shutdown_timeout=1.0)
        self._control_runner = web.AppRunner(control, access_log=None, shutdown_timeout=1.0)
        await self._ingest_runner.setup()
        await self._control_runner.setup()
        try:
            sock = _listen_socket(self.host, self.port)
            self.port = sock.getsockname()[1]
            self._ingest_site = web.SockSite(self._ingest_runner, sock)
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
                site = web.SockSite(runner, _listen_socket(self.host, self.port))
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
            variant = faults.hostile_variant or MALFORMED_REJECTED_VARIANTS[
                self._malformed_turn % len(MALFORMED_REJECTED_VARIANTS)
            ]
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

        seen = self._seen
        new: list[dict[str, Any]] = []
        rejected: list[dict[str, str]] = []
        duplicates = 0
        if faults.reject_pattern is None:
            for ev in events:
                eid = ev["event_id"]
                if eid in seen:
                    duplicates += 1
                else:
                    seen.add(eid)
                    new.append(ev)
        else:
            rx = self._compiled(faults.reject_pattern)
            path = tuple(faults.reject_field.split("."))
            reason = f"{faults.reject_field} matches {faults.reject_pattern!r}"
            if faults.reject_mode != "partial":
                bad = [
                    {"event_id": ev["event_id"], "reason": reason}
                    for ev in events
                    if _matches(rx, ev, path)
                ]
                if bad:
                    self._rejected_requests += 1
                    return web.json_response(
                        {"error": f"{len(bad)} event(s) rejected", "rejected": bad},
                        status=400 if faults.reject_mode == "batch400" else 422,
                    )
            for ev in events:
                eid = ev["event_id"]
                if eid in seen:
                    duplicates += 1
                elif faults.reject_mode == "partial" and _matches(rx, ev, path):
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

    def _reject_first(self, body: bytes, wall: float, entry: dict[str, Any]) -> web.Response:
        """Accept the batch but its first new event, rejected with a non-string reason."""
        events = _parse_events(body)
        if isinstance(events, web.Response):
            return events
        entry["events"] = len(events)
        seen = self._seen
        new: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        duplicates = 0
        for ev in events:
            eid = ev["event_id"]
            if eid in seen:
                duplicates += 1
            elif not rejected:
                rejected.append({"event_id": eid, "reason": {"code": 17, "text": "tote blocked"}})
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

    # -- control API -------------------------------------------------------

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

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
        kept = self._kept
        start = max(after, kept.first)
        page = kept.records(start, limit)
        return web.json_response(
            {"events": page, "total": kept.total, "first": kept.first, "next": start + len(page)}
        )

    async def _handle_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests})

    async def _handle_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_dict())

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
            await self.update_faults(patch)
        except FaultError as err:
            return web.json_response({"error": str(err), "key": err.key}, status=400)
        return web.json_response(self.faults.to_dict())

    async def _handle_outage(self, request: web.Request) -> web.Response:
        doc = await self._read_object(request)
        if isinstance(doc, web.Response):
            return doc
        seconds = doc.get("seconds")
        on = doc.get("on")
        if seconds is not None and _is_number(seconds) and seconds > 0:
            await self.outage_for(float(seconds))
        elif seconds is None and isinstance(on, bool):
            await self.set_outage(on)
        else:
            return _error(400, 'expected {"seconds": S > 0} or {"on": true|false}')
        return web.json_response({"outage": self.faults.outage, "seconds": seconds})

    async def _handle_reset(self, request: web.Request) -> web.Response:
        doc = await self._read_object(request)
        if isinstance(doc, web.Response):
            return doc
        which = doc.get("faults", "initial")
        if which not in ("initial", "defaults"):
            return _error(400, 'faults must be "initial" or "defaults"')
        await self.reset(Faults() if which == "defaults" else None)
        return web.json_response(self.stats())


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


# -- command line ----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``wms`` sub-command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="ingest port (0: pick one)")
    parser.add_argument(
        "--control-port", type=int, default=None, help="control port (default: ingest port + 1)"
    )
    parser.add_argument("--path", default="/api/events")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--reject-pattern", default=None)
    parser.add_argument("--reject-field", default="event_id")
    parser.add_argument("--reject-mode", default="partial", choices=_REJECT_MODES)
    parser.add_argument("--token-file", type=Path, default=None, help="require this bearer token")
    parser.add_argument("--max-body-bytes", type=int, default=None)
    parser.add_argument("--retry-after-status", type=int, default=None, choices=[429, 503])
    parser.add_argument("--retry-after", default="1", help="seconds or an HTTP-date")
    parser.add_argument(
        "--retry-after-count", type=int, default=1, help="requests that get it (-1: all)"
    )
    parser.add_argument(
        "--hostile", default=None, choices=_HOSTILE_MODES, help="misbehave this way (see docs)"
    )
    parser.add_argument(
        "--hostile-count", type=int, default=-1, help="requests that get it (-1: all)"
    )
    parser.add_argument(
        "--hostile-body-bytes", type=int, default=1024**3, help="size of the huge_body reply"
    )
    parser.add_argument(
        "--hostile-redirect-to",
        default="control",
        choices=_REDIRECT_TARGETS,
        help="where redirect_307 points: the ingest path on the control listener, or itself",
    )
    parser.add_argument(
        "--hostile-variant",
        default=None,
        choices=MALFORMED_REJECTED_VARIANTS,
        help="malformed_rejected: always this variant (default: each in turn)",
    )
    parser.add_argument(
        "--hostile-interval-ms", type=float, default=100.0, help="pause between endless_body chunks"
    )
    parser.add_argument("--keep-events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)


def _faults_from_args(args: argparse.Namespace) -> Faults:
    patch: dict[str, object] = {
        "error_rate": args.error_rate,
        "latency_ms": args.latency_ms,
        "reject_pattern": args.reject_pattern,
        "reject_field": args.reject_field,
        "reject_mode": args.reject_mode,
        "max_body_bytes": args.max_body_bytes,
        "retry_after_status": args.retry_after_status,
        "retry_after": args.retry_after,
        "retry_after_count": args.retry_after_count,
        "hostile": args.hostile,
        "hostile_count": args.hostile_count,
        "hostile_body_bytes": args.hostile_body_bytes,
        "hostile_redirect_to": args.hostile_redirect_to,
        "hostile_variant": args.hostile_variant,
        "hostile_interval_ms": args.hostile_interval_ms,
        "seed": args.seed,
    }
    if args.token_file is not None:
        patch["token"] = args.token_file.read_text(encoding="utf-8").strip()
    faults = Faults()
    faults.update(patch)
    return faults


async def _serve(args: argparse.Namespace, faults: Faults) -> None:
    control_port = args.control_port
    if control_port is None:
        control_port = args.port + 1 if args.port else 0
    sim = WmsSimulator(
        host=args.host,
        port=args.port,
        control_port=control_port,
        path=args.path,
        faults=faults,
        keep_events=args.keep_events,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    try:
        print(f"wms simulator: ingest {sim.url} control {sim.control_url}", flush=True)  # noqa: T201
        await stop.wait()
    finally:
        await sim.stop()


def run(args: argparse.Namespace) -> int:
    """Run the ``wms`` sub-command until SIGINT/SIGTERM; return the exit code."""
    try:
        faults = _faults_from_args(args)
    except (FaultError, OSError) as err:
        print(f"wms: {err}", file=sys.stderr)  # noqa: T201
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, faults))
    return 0
