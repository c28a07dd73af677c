"""HTTP sink: the upstream WMS/ERP ingest contract (docs/upstream-http.md).

| response                         | what the sink does                                  |
|----------------------------------|-----------------------------------------------------|
| 2xx, empty or ``{...}`` (+ valid | delivered; rejected ones become dead letters        |
| ``rejected`` list)               |                                                     |
| 2xx it cannot interpret, body    | sink error: retried with backoff; after             |
| over ``max_response_bytes``, 3xx | ``pause_after_failures`` alike, paused with an      |
|                                  | alert, probing every ``paused_retry``               |
| 409                              | duplicate batch: delivered                          |
| 400 / 422                        | split the batch to isolate bad events; dead-letter  |
|                                  | only single events the upstream still refuses       |
| 401 / 403                        | pause, alert; retry when the token file changes or  |
|                                  | every ``auth_retry``; never dead-letter             |
| 413                              | halve the batch size and resend                     |
| 429 / 503 with Retry-After       | nothing to this sink before max(backoff, RA), capped|
| other 5xx, timeout, conn. error  | retry forever, capped exponential backoff, jitter   |
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from yarl import URL

from gateway.config import HttpSinkConfig
from gateway.core.backoff import Backoff
from gateway.core.records import Row, SinkDeadLetter
from gateway.core.throttle import LogThrottle
from gateway.core.tls import INSECURE_WARNING, client_context, describe_tls_error

log = structlog.get_logger(__name__)

#: Accepted requests after which a batch size halved by 413 is doubled again.
GROW_AFTER = 100
#: Most 307/308 hops followed (with ``follow_redirects``) before it is a sink error.
MAX_REDIRECTS = 3
#: Characters of a reply (or a Location) quoted in logs, errors and alerts.
SAMPLE_CHARS = 120
#: Characters kept of a reason an upstream gives for a rejected event.
REASON_CHARS = 300
#: Interval of throttled log lines (dead letters, sink errors) per sink and kind.
LOG_INTERVAL_S = 60.0
#: Bytes asked of the response stream per read.
READ_CHUNK = 64 * 1024

_DELTA_SECONDS = re.compile(r"[0-9]+")


@dataclass(slots=True)
class _Delivered:
    rejected: list[SinkDeadLetter]


@dataclass(slots=True)
class _TooLarge:
    pass


@dataclass(slots=True)
class _BadBatch:
    status: int
    detail: str


@dataclass(slots=True)
class _SinkError:
    """A reply the sink cannot interpret: retried, never delivered nor dead-lettered."""

    kind: str  # stable: "redirect", "bad_reply", "too_large"
    status: int
    detail: str  # what was wrong, quoting a short sample of what the upstream sent


@dataclass(slots=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    over_cap: bool  # the body was longer than max_response_bytes (``body`` is its start)


@dataclass(slots=True)
class HttpSinkStats:
    """Counters of one HTTP sink."""

    delivered: int = 0
    requests: int = 0
    failures: int = 0
    retries: int = 0
    dead_letters: int = 0
    splits: int = 0
    protocol_errors: int = 0
    unknown_rejects: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    #: Status of the last reply; None when the last attempt got none (refused, timed out).
    last_status: int | None = None
    #: The last failure in plain words, and as the library reported it.
    last_error: str | None = None
    last_error_raw: str | None = None
    last_success: float | None = None
    #: Wall time of the first failure since the last success (None while delivering).
    down_since: float | None = None
    #: Request bodies sent, in bytes (resends included).
    bytes_sent: int = 0


def batch_key(rows: list[Row]) -> str:
    """Idempotency-Key of a batch: a digest of its seq range and event ids.

    A resend of the same batch (after a timeout or a restart) gets the same
    key; a replayed dead letter is a new row with a new ``seq``, so its key
    differs from the request that was rejected.
    """
    h = hashlib.sha256(f"{rows[0].seq}-{rows[-1].seq}\n".encode())
    for r in rows:
        h.update(r.event_id.encode())
        h.update(b"\n")
    return h.hexdigest()[:40]


def _http_date(value: str | None) -> float | None:
    """An HTTP-date as a POSIX timestamp, or None when it is not one."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322 says UTC with unknown local zone
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def parse_retry_after(
    value: str | None, now_wall: float, date: str | None = None
) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date).

    An HTTP-date is taken relative to the response's own ``Date`` header when
    that parses, so a gateway clock that is off does not stretch or shorten
    the wait; only without a usable ``Date`` is it compared with ``now_wall``.
    The caller caps the result (``retry_after_max``) and turns it into a
    monotonic deadline once.
    """
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    base = _http_date(date)
    return max(0.0, when - (now_wall if base is None else base))


def sample(data: bytes | str, limit: int = SAMPLE_CHARS) -> str:
    """A short, printable quote of what a peer sent (for logs and alerts)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    head = text[: limit + 1]
    clean = "".join(c if c.isprintable() else " " for c in head)
    clean = " ".join(clean.split())
    return clean[:limit] + "…" if len(text) > limit else clean


def plain_error(err: BaseException, timeout: float) -> str:
    """A transport failure in plain words (``ClientConnectorError`` names ``ssl:default``
    even for a plain-http URL; an operator wants "cannot connect ... connection refused")."""
    if isinstance(err, aiohttp.ClientConnectorError):
        os_err = err.os_error
        why = {111: "connection refused", 113: "no route to host", 101: "network unreachable",
               110: "connection timed out"}.get(os_err.errno or 0)
        if why is None:
            why = os_err.strerror or str(os_err) or type(os_err).__name__
            if isinstance(os_err, OSError) and "Name or service" in str(os_err):
                why = "host name not found"
        return f"cannot connect to {err.host}:{err.port}: {why}"
    if isinstance(err, TimeoutError):
        return f"no reply within {timeout:g} s"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "the upstream closed the connection before replying"
    if isinstance(err, aiohttp.ClientPayloadError):
        return "the reply was cut off"
    if isinstance(err, aiohttp.ClientOSError):
        return f"connection failed: {err.strerror or err}"
    return f"{type(err).__name__}: {err}"


def _coerce_reason(value: Any) -> str:
    if value is None:
        return "rejected by upstream"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text[:REASON_CHARS]


class HttpSink:
    """Sends batches of events to one WMS/ERP endpoint."""

    def __init__(
        self,
        cfg: HttpSinkConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.routes = frozenset(cfg.routes) if cfg.routes is not None else None
        self.batch_max = cfg.batch_max
        self.batch_limit = cfg.batch_max
        self._accepted_since_shrink = 0
        self._clock = clock
        self._wall = wall
        self._backoff = Backoff(cfg.backoff_initial, cfg.backoff_max)
        self._session: aiohttp.ClientSession | None = None
        # Built once: a key or certificate that cannot be loaded fails here, naming it.
        self._ssl: ssl.SSLContext | None = (
            client_context(cfg) if cfg.url.startswith("https://") else None)
        #: The TLS problem of the last attempt, until a request gets through.
        self.tls_problem: str | None = None
        if cfg.insecure:
            log.warning("sink_tls_insecure", sink=cfg.id, warning=INSECURE_WARNING)
        self._token: str | None = None
        self._token_stamp: tuple[float, int] | None = None
        #: When the request in flight was sent (``clock``), for the watchdog.
        self._send_started: float | None = None
        self.not_before = 0.0
        self.paused_auth: str | None = None
        self.paused_protocol: str | None = None
        self.stats = HttpSinkStats()
        self._unavailable_logged = False
        #: Sink errors by (kind, status) since the last interpretable reply.
        self._sink_errors: dict[tuple[str, int], int] = {}
        self._throttle = LogThrottle(log, LOG_INTERVAL_S, clock=clock)

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Nothing runs in the background: the forwarder drives ``deliver``."""
        await asyncio.Event().wait()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
                connector=aiohttp.TCPConnector(limit=4, enable_cleanup_closed=True,
                                               ssl=self._ssl if self._ssl is not None else True),
                # No Accept-Encoding, no decompression: max_response_bytes then
                # bounds the memory a reply takes, with no gzip bomb around it.
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def send_timeout(self) -> float:
        """The longest one request may take (``timeout``)."""
        return self.cfg.timeout

    def send_age(self, now: float) -> float | None:
        """How long the request in flight has been awaited (``None``: none is)."""
        return None if self._send_started is None else now - self._send_started

    def reconfigure(self, cfg: HttpSinkConfig) -> None:
        """Take a reloaded config whose changes are all in ``gateway.reload.HTTP_SINK_LIVE``."""
        if (cfg.backoff_initial, cfg.backoff_max) != (self.cfg.backoff_initial,
                                                      self.cfg.backoff_max):
            self._backoff = Backoff(cfg.backoff_initial, cfg.backoff_max)
        if cfg.token_file != self.cfg.token_file:
            self._token, self._token_stamp = None, None
        self.cfg = cfg

    # -- token ------------------------------------------------------------------------

    def _token_file_stamp(self) -> tuple[float, int] | None:
        path = self.cfg.token_file
        if path is None:
            return None
        try:
            st = Path(path).stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def _authorization(self) -> str | None:
        path = self.cfg.token_file
        if path is None:
            return None
        stamp = self._token_file_stamp()
        if stamp != self._token_stamp or self._token is None:
            try:
                self._token = Path(path).read_text(encoding="utf-8").strip()
            except OSError as err:
                log.error("sink_token_unreadable", sink=self.id, path=str(path),
                          error=err.strerror)
                self._token = ""
            self._token_stamp = stamp
        return f"Bearer {self._token}"

    # -- delivery ---------------------------------------------------------------------

    async def deliver(self, rows: list[Row]) -> list[SinkDeadLetter]:
        """Deliver rows in order; split, shrink and retry as the contract says."""
        self._throttle.flush()
        dead: list[SinkDeadLetter] = []
        kinds: list[str] = []  # why each dead letter is one, for the throttled log
        pending: list[list[Row]] = [rows]
        limit_at_start = self.batch_limit
        while pending:
            group = pending.pop(0)
            chunk, rest = self._take(group)
            if rest:
                pending.insert(0, rest)
            outcome = await self._post_until_decided(chunk)
            if isinstance(outcome, _Delivered):
                dead.extend(outcome.rejected)
                kinds.extend(["rejected"] * len(outcome.rejected))
                self.stats.delivered += len(chunk) - len(outcome.rejected)
                self._grow_back()
            elif isinstance(outcome, _TooLarge):
                if len(chunk) == 1:
                    dead.append(SinkDeadLetter(
                        chunk[0].seq, chunk[0].event_id,
                        f"413: a single event ({len(chunk[0].body)} bytes) is larger than "
                        "the upstream accepts"))
                    kinds.append("too_large")
                    # The halvings that isolated it were its fault, not the batch
                    # size's: without this one big event pins the sink at 1 per request.
                    self.batch_limit = limit_at_start
                else:
                    self.batch_limit = max(1, len(chunk) // 2)
                    self._accepted_since_shrink = 0
                    log.warning("sink_batch_halved", sink=self.id, batch_limit=self.batch_limit)
                    pending.insert(0, chunk)
            else:
                if len(chunk) == 1:
                    dead.append(SinkDeadLetter(
                        chunk[0].seq, chunk[0].event_id,
                        f"{outcome.status}: {outcome.detail}"))
                    kinds.append("refused")
                else:
                    self.stats.splits += 1
                    mid = len(chunk) // 2
                    pending[0:0] = [chunk[:mid], chunk[mid:]]
        self.stats.dead_letters += len(dead)
        for kind in dict.fromkeys(kinds):
            mine = [d for d, k in zip(dead, kinds, strict=True) if k == kind]
            # One line per sink and kind per interval: at production rates a
            # line per rejected batch would drown everything else.
            self._throttle.log("warning", "sink_dead_letters", (self.id, "dead_letters", kind),
                               sink=self.id, kind=kind, count=len(mine),
                               total=self.stats.dead_letters, first_reason=mine[0].reason)
        return dead

    def _grow_back(self) -> None:
        # A 413 may have come from a passing limit (a proxy being reconfigured):
        # after GROW_AFTER accepted requests, try twice the batch size again.
        if self.batch_limit >= self.batch_max:
            return
        self._accepted_since_shrink += 1
        if self._accepted_since_shrink >= GROW_AFTER:
            self.batch_limit = min(self.batch_max, self.batch_limit * 2)
            self._accepted_since_shrink = 0
            log.info("sink_batch_grown", sink=self.id, batch_limit=self.batch_limit)

    def _take(self, group: list[Row]) -> tuple[list[Row], list[Row]]:
        """The longest prefix within the batch limit and the body size limit."""
        limit = min(self.batch_limit, len(group))
        budget = self.cfg.max_body_bytes - 16
        size = 0
        n = 0
        while n < limit:
            size += len(group[n].body) + 1
            if size > budget and n > 0:
                break
            n += 1
        return group[:n], group[n:]

    async def _wait_gate(self) -> None:
        delay = self.not_before - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _post_until_decided(self, chunk: list[Row]) -> _Delivered | _TooLarge | _BadBatch:
        body = b'{"events":[' + b",".join(r.body for r in chunk) + b"]}"
        key = batch_key(chunk)
        while True:
            await self._wait_gate()
            if self.paused_auth is not None:
                await self._wait_auth_change()
            headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                       **self.cfg.headers}
            auth = self._authorization()
            if auth is not None:
                headers["Authorization"] = auth
            self.stats.bytes_sent += len(body)
            self._send_started = self._clock()
            try:
                reply = await self._exchange(body, headers)
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                tls = self._describe_tls(err)
                if tls is not None and tls != self.tls_problem:
                    log.error("sink_tls_failed", sink=self.id, url=self.cfg.url, error=tls)
                self.tls_problem = tls
                self._transient(tls or plain_error(err, self.cfg.timeout), None, None,
                                raw=f"{type(err).__name__}: {err}")
                continue
            finally:
                self._send_started = None
            if isinstance(reply, _SinkError):
                self._sink_error(reply)
                continue
            try:
                outcome = self._decide(reply, chunk)
            except Exception as err:  # a reply must never end the process: retry it instead
                outcome = _SinkError("bad_reply", reply.status,
                                     f"HTTP {reply.status} reply could not be interpreted "
                                     f"({type(err).__name__}): {sample(reply.body)!r}")
            if isinstance(outcome, _SinkError):
                self._sink_error(outcome)
                continue
            if outcome is not None:
                return outcome

    async def _exchange(
        self, body: bytes, headers: dict[str, str]
    ) -> _Reply | _SinkError:
        """POST the batch and read the reply, capped; 307/308 hops only if configured."""
        url = URL(self.cfg.url)
        hops = 0
        # ClientTimeout(total) already runs until the body is read; this also
        # bounds redirect hops together, so ``timeout`` is the whole exchange.
        async with asyncio.timeout(self.cfg.timeout):
            while True:
                self.stats.requests += 1
                async with self._get_session().post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    status = resp.status
                    self._count_status(status)
                    if 300 <= status < 400:
                        target = self._redirect_target(url, status,
                                                       resp.headers.get("Location"), hops)
                        if isinstance(target, _SinkError):
                            return target
                        if target.host != url.host:
                            # The token is for the configured host only.
                            headers = {k: v for k, v in headers.items()
                                       if k.lower() != "authorization"}
                        # Every request may be redirected: one line per interval.
                        self._throttle.log("info", "sink_redirect_followed",
                                           (self.id, "redirect_followed"), sink=self.id,
                                           status=status, location=sample(str(target)))
                        url, hops = target, hops + 1
                        continue
                    data, over_cap = await self._read_capped(resp)
                    return _Reply(status, resp.headers.copy(), data, over_cap)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """At most ``max_response_bytes`` of the body, and whether there was more."""
        cap = self.cfg.max_response_bytes
        declared = resp.content_length
        if declared is not None and declared > cap:
            return await resp.content.read(SAMPLE_CHARS * 4), True
        buf = bytearray()
        while len(buf) <= cap:
            piece = await resp.content.read(min(READ_CHUNK, cap + 1 - len(buf)))
            if not piece:
                return bytes(buf), False
            buf += piece
        # Leaving the rest unread makes aiohttp close the connection, not reuse it.
        return bytes(buf[:cap]), True

    def _redirect_target(
        self, url: URL, status: int, location: str | None, hops: int
    ) -> URL | _SinkError:
        if location is None:
            return _SinkError("redirect", status, f"HTTP {status} redirect without a Location")
        where = sample(location)
        if not self.cfg.follow_redirects or status not in (307, 308):
            return _SinkError(
                "redirect", status,
                f"HTTP {status} redirect to {where!r} not followed: set the sink's url "
                "to the final ingest URL")
        if hops >= MAX_REDIRECTS:
            return _SinkError("redirect", status,
                              f"more than {MAX_REDIRECTS} redirects (last to {where!r})")
        try:
            target = url.join(URL(location))
        except (ValueError, TypeError):
            return _SinkError("redirect", status, f"HTTP {status} redirect to an invalid "
                              f"Location {where!r}")
        if target.scheme not in ("http", "https") or not target.host:
            return _SinkError("redirect", status,
                              f"HTTP {status} redirect to {where!r} not followed: not http(s)")
        if url.scheme == "https" and target.scheme == "http":
            return _SinkError("redirect", status,
                              f"HTTP {status} redirect to {where!r} not followed: "
                              "it leaves https")
        return target

    def _count_status(self, status: int) -> None:
        self.stats.status_counts[status] = self.stats.status_counts.get(status, 0) + 1
        self.stats.last_status = status

    def _decide(
        self, reply: _Reply, chunk: list[Row]
    ) -> _Delivered | _TooLarge | _BadBatch | _SinkError | None:
        """What a reply means for the chunk; None: retry (already scheduled)."""
        status, text = reply.status, reply.body
        if 200 <= status < 300:
            interpreted = self._interpret_2xx(reply, chunk)
            if isinstance(interpreted, _SinkError):
                return interpreted
            self._success()
            return _Delivered(interpreted)
        if status == 409:
            self._success()
            return _Delivered([])
        retry_after = reply.headers.get("Retry-After")
        if status in (401, 403):
            self._pause_auth(status)
            return None
        if status == 413:
            self._success()
            return _TooLarge()
        if status in (400, 422):
            self._success()
            return _BadBatch(status, text[:300].decode("utf-8", "replace"))
        if status in (429, 503) and retry_after is not None:
            self._transient(f"HTTP {status}", status, retry_after, reply.headers.get("Date"))
            return None
        self._transient(f"HTTP {status}: {sample(text, 200)}", status, None)
        return None

    def _interpret_2xx(self, reply: _Reply, chunk: list[Row]) -> list[SinkDeadLetter] | _SinkError:
        """The rejected events of a 2xx reply, or why the reply is not a delivery.

        A delivery is an empty body, or a JSON object whose ``rejected`` (when
        present and not null) is a list of objects each with a string
        ``event_id`` (``reason`` is coerced to a string and truncated). Anything
        else may be a proxy's or a login page's 200: the events may not have
        arrived, so the batch is kept and retried.
        """
        status, text = reply.status, reply.body

        def bad(what: str) -> _SinkError:
            return _SinkError("bad_reply", status,
                              f"HTTP {status} reply {what}: {sample(text)!r}")

        if reply.over_cap:
            return _SinkError("too_large", status,
                              f"HTTP {status} reply is larger than max_response_bytes "
                              f"({self.cfg.max_response_bytes} bytes): {sample(text)!r}")
        if not text.strip():
            return []
        encoding = reply.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return bad(f"has Content-Encoding {sample(encoding, 40)!r}, which was not asked for")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too deep
            return bad("is not JSON")
        if not isinstance(doc, dict):
            return bad(f"is JSON but not an object ({type(doc).__name__})")
        rejected = doc.get("rejected")
        if rejected is None:
            return []
        if not isinstance(rejected, list):
            return bad("has a 'rejected' that is not a list")
        by_id = {r.event_id: r.seq for r in chunk}
        out: dict[int, SinkDeadLetter] = {}
        unknown = 0
        for item in rejected:
            if not isinstance(item, dict) or not isinstance(item.get("event_id"), str):
                return bad("has a 'rejected' entry without a string 'event_id'")
            seq = by_id.get(item["event_id"])
            if seq is None:
                unknown += 1
            elif seq not in out:
                out[seq] = SinkDeadLetter(seq, item["event_id"], _coerce_reason(item.get("reason")))
        if unknown:
            self.stats.unknown_rejects += unknown
            self._throttle.log("warning", "sink_reject_unknown_ids", (self.id, "unknown_ids"),
                               sink=self.id, count=unknown, total=self.stats.unknown_rejects,
                               action="ignored: not events of the batch sent")
        return list(out.values())

    def _sink_error(self, err: _SinkError) -> None:
        """Count, log (throttled), retry with backoff; pause after enough alike."""
        self.stats.protocol_errors += 1
        sig = (err.kind, err.status)
        n = self._sink_errors.get(sig, 0) + 1
        self._sink_errors[sig] = n
        self._throttle.log("warning", "sink_protocol_error", (self.id, "protocol", err.kind),
                           sink=self.id, kind=err.kind, status=err.status, error=err.detail,
                           consecutive=n)
        if self.paused_protocol is None and n >= self.cfg.pause_after_failures:
            self.paused_protocol = (
                f"{err.detail} (paused after {n} such replies; retrying every "
                f"{self.cfg.paused_retry:g}s)")
            log.error("sink_paused_protocol", sink=self.id, kind=err.kind, status=err.status,
                      error=err.detail, failures=n, retry_every_s=self.cfg.paused_retry,
                      action="fix the upstream or the sink's url; delivery resumes by itself")
        elif self.paused_protocol is not None:
            # Keep the alert current: the problem may have changed while paused.
            self.paused_protocol = (
                f"{err.detail} (paused; retrying every {self.cfg.paused_retry:g}s)")
        self._transient(err.detail, err.status, None)

    def _describe_tls(self, err: BaseException) -> str | None:
        """The TLS failure behind an aiohttp error, as one line (``None``: not TLS)."""
        if self._ssl is None:
            return None
        peer = f"sink {self.id} ({URL(self.cfg.url).host})"
        seen: set[int] = set()
        cause: BaseException | None = err
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            nested = getattr(cause, "certificate_error", None) or getattr(cause, "os_error", None)
            if isinstance(nested, BaseException) and nested is not cause:
                cause = nested
                continue
            if isinstance(cause, ssl.SSLError):
                return describe_tls_error(cause, peer)
            if isinstance(cause, ConnectionResetError) and self.cfg.cert_file is None:
                # A server refusing a TLS 1.3 client without a certificate may
                # reset the connection instead of sending its alert.
                return (f"TLS: {peer} reset the connection during TLS; if it requires a "
                        "client certificate, set cert_file and key_file")
            cause = cause.__cause__ or cause.__context__
        return None

    def _success(self) -> None:
        self.tls_problem = None
        if self._unavailable_logged or self.paused_auth is not None or self.paused_protocol:
            log.info("sink_available", sink=self.id)
        self._unavailable_logged = False
        self.paused_auth = None
        self.paused_protocol = None
        self._sink_errors.clear()
        self._backoff.reset()
        self.stats.last_error = self.stats.last_error_raw = None
        self.stats.last_success = self._wall()
        self.stats.down_since = None

    def _transient(
        self, error: str, status: int | None, retry_after: str | None, date: str | None = None,
        *, raw: str | None = None,
    ) -> None:
        self.stats.failures += 1
        self.stats.retries += 1
        self.stats.last_error = error
        self.stats.last_error_raw = raw or error
        if status is None:
            self.stats.last_status = None  # no reply: the last one's status is history
        if self.stats.down_since is None:
            self.stats.down_since = self._wall()
        delay = self._backoff.next()
        ra = parse_retry_after(retry_after, self._wall(), date)
        if ra is not None:
            delay = min(max(delay, ra), self.cfg.retry_after_max)
        if self.paused_protocol is not None:
            delay = max(delay, self.cfg.paused_retry)
        # A monotonic deadline, fixed now: a later wall-clock step cannot move it.
        self.not_before = self._clock() + delay
        if not self._unavailable_logged:
            log.warning("sink_unavailable", sink=self.id, error=error, status=status,
                        retry_in_s=round(delay, 3))
            self._unavailable_logged = True
        else:
            log.debug("sink_retry", sink=self.id, error=error, retry_in_s=round(delay, 3))

    def _pause_auth(self, status: int) -> None:
        self.stats.failures += 1
        if self.paused_auth is None:
            log.error("sink_auth_failed", sink=self.id, status=status,
                      token_file=str(self.cfg.token_file) if self.cfg.token_file else None,
                      action="paused; fix the token file, delivery resumes by itself")
        self.paused_auth = f"HTTP {status}: upstream refused the credentials"
        self.stats.last_error = self.stats.last_error_raw = self.paused_auth
        if self.stats.down_since is None:
            self.stats.down_since = self._wall()
        self._auth_stamp = self._token_file_stamp()
        self._auth_paused_at = self._clock()

    async def _wait_auth_change(self) -> None:
        # Poll the token file: a fixed token resumes delivery at once; otherwise
        # try again every auth_retry in case the upstream side was fixed.
        while (
            self._token_file_stamp() == self._auth_stamp
            and self._clock() - self._auth_paused_at < self.cfg.auth_retry
        ):
            await asyncio.sleep(0.2)

    def snapshot(self) -> dict[str, Any]:
        """State for the status API."""
        s = self.stats
        now = self._clock()
        if self.paused_auth is not None:
            state = "paused_auth"
        elif self.paused_protocol is not None:
            state = "paused_protocol"
        elif self.not_before > now:
            state = "backoff"
        elif s.last_error is not None:
            state = "failing"
        else:
            state = "ok"
        return {
            "type": "http",
            "url": self.cfg.url,
            "state": state,
            "alert": "; ".join(a for a in (
                self.paused_auth or self.paused_protocol, self.tls_problem,
                INSECURE_WARNING if self.cfg.insecure else None) if a) or None,
            "delivered": s.delivered,
            "requests": s.requests,
            "failures": s.failures,
            "dead_letters": s.dead_letters,
            "splits": s.splits,
            "protocol_errors": s.protocol_errors,
            "unknown_rejects": s.unknown_rejects,
            "batch_limit": self.batch_limit,
            "retry_in_s": round(max(0.0, self.not_before - now), 3),
            "last_status": s.last_status,
            "last_error": s.last_error,
            "last_error_raw": s.last_error_raw,
            "last_success": s.last_success,
            "down_since": s.down_since,
            "bytes_sent": s.bytes_sent,
            "status_counts": {str(k): v for k, v in s.status_counts.items()},
        }
