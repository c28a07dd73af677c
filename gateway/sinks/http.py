"""HTTP sink: the upstream WMS/ERP ingest contract (docs/upstream-http.md).

| response                         | what the sink does                                  |
|----------------------------------|-----------------------------------------------------|
| 2xx (+ ``rejected`` list)        | delivered; rejected ones become dead letters        |
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from buffer.store import Row, SinkDeadLetter
from gateway.config import HttpSinkConfig
from gateway.sinks.base import Backoff

log = structlog.get_logger(__name__)

#: Accepted requests after which a batch size halved by 413 is doubled again.
GROW_AFTER = 100


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
class HttpSinkStats:
    """Counters of one HTTP sink."""

    delivered: int = 0
    requests: int = 0
    failures: int = 0
    retries: int = 0
    dead_letters: int = 0
    splits: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    last_status: int | None = None
    last_error: str | None = None
    last_success: float | None = None


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


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_wall)


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
        self._token: str | None = None
        self._token_stamp: tuple[float, int] | None = None
        self.not_before = 0.0
        self.paused_auth: str | None = None
        self.stats = HttpSinkStats()
        self._unavailable_logged = False

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Nothing runs in the background: the forwarder drives ``deliver``."""
        await asyncio.Event().wait()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
                connector=aiohttp.TCPConnector(limit=4, enable_cleanup_closed=True),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        dead: list[SinkDeadLetter] = []
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
                self.stats.delivered += len(chunk) - len(outcome.rejected)
                self._grow_back()
            elif isinstance(outcome, _TooLarge):
                if len(chunk) == 1:
                    dead.append(SinkDeadLetter(
                        chunk[0].seq, chunk[0].event_id,
                        f"413: a single event ({len(chunk[0].body)} bytes) is larger than "
                        "the upstream accepts"))
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
                else:
                    self.stats.splits += 1
                    mid = len(chunk) // 2
                    pending[0:0] = [chunk[:mid], chunk[mid:]]
        self.stats.dead_letters += len(dead)
        if dead:
            log.warning("sink_dead_letters", sink=self.id, count=len(dead),
                        first_reason=dead[0].reason)
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
            self.stats.requests += 1
            try:
                async with self._get_session().post(
                    self.cfg.url, data=body, headers=headers
                ) as resp:
                    status = resp.status
                    text = await resp.read()
                    retry_after = resp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                self._transient(f"{type(err).__name__}: {err}", None, None)
                continue
            self.stats.status_counts[status] = self.stats.status_counts.get(status, 0) + 1
            self.stats.last_status = status
            if 200 <= status < 300 or status == 409:
                self._success()
                return _Delivered(self._rejected(text, chunk) if status != 409 else [])
            if status in (401, 403):
                self._pause_auth(status)
                continue
            if status == 413:
                self._success()
                return _TooLarge()
            if status in (400, 422):
                self._success()
                return _BadBatch(status, text[:300].decode("utf-8", "replace"))
            if status in (429, 503) and retry_after is not None:
                self._transient(f"HTTP {status}", status, retry_after)
                continue
            self._transient(f"HTTP {status}: {text[:200].decode('utf-8', 'replace')}",
                            status, None)

    def _rejected(self, text: bytes, chunk: list[Row]) -> list[SinkDeadLetter]:
        try:
            doc = json.loads(text) if text else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return []
        rejected = doc.get("rejected") if isinstance(doc, dict) else None
        if not isinstance(rejected, list) or not rejected:
            return []
        by_id = {r.event_id: r.seq for r in chunk}
        out = []
        for item in rejected:
            if isinstance(item, dict) and item.get("event_id") in by_id:
                reason = str(item.get("reason", "rejected by upstream"))
                out.append(SinkDeadLetter(by_id[item["event_id"]], item["event_id"], reason))
        return out

    def _success(self) -> None:
        if self._unavailable_logged or self.paused_auth is not None:
            log.info("sink_available", sink=self.id)
        self._unavailable_logged = False
        self.paused_auth = None
        self._backoff.reset()
        self.stats.last_error = None
        self.stats.last_success = self._wall()

    def _transient(self, error: str, status: int | None, retry_after: str | None) -> None:
        self.stats.failures += 1
        self.stats.retries += 1
        self.stats.last_error = error
        delay = self._backoff.next()
        ra = parse_retry_after(retry_after, self._wall())
        if ra is not None:
            delay = min(max(delay, ra), self.cfg.retry_after_max)
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
        self.stats.last_error = self.paused_auth
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
            "alert": self.paused_auth,
            "delivered": s.delivered,
            "requests": s.requests,
            "failures": s.failures,
            "dead_letters": s.dead_letters,
            "splits": s.splits,
            "batch_limit": self.batch_limit,
            "retry_in_s": round(max(0.0, self.not_before - now), 3),
            "last_status": s.last_status,
            "last_error": s.last_error,
            "last_success": s.last_success,
            "status_counts": {str(k): v for k, v in s.status_counts.items()},
        }
