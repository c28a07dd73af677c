"""``GET /api/dead-letters``: bounded streamed pages, strict parameters, bodies behind a token.

A real gateway process (harness ``simulators/harness/gateway.py``) over a real
Mosquitto, its store holding many large ingest dead letters written through
the store API; every request goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e import site, start

from buffer.store import Store
from gateway.core.records import IngestDeadLetter
from gateway.status import PAGE_MAX_BYTES, is_loopback_host
from simulators.broker import MosquittoBroker
from simulators.harness.gateway import GatewayProcess

KiB, MiB = 1024, 1024 * 1024
TOKEN = "s3cret-status-token"


def fill_store(path: Path, count: int, size: int) -> None:
    """``count`` ingest dead letters of ``size`` bytes each, id i's body starting with i."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Kept whole (as sink dead letters of large events are), not cut to a prefix.
    store = Store(path, max_bytes=2 * 1024**3, synchronous="NORMAL",
                  dead_letter_max_bytes=2 * 1024**3, dead_letter_payload_bytes=max(256, size))
    try:
        for start_i in range(0, count, 50):
            store.append([[IngestDeadLetter(
                device="scan-01", reason="not_json: test",
                payload=f"{i:08d}".encode() + bytes([i % 251]) * (size - 8),
                context={"topic": "site/DC-EAST-1/scanners/scan-01/reads"},
            )] for i in range(start_i, min(count, start_i + 50))])
    finally:
        store.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a GET (4xx included)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a POST (4xx included)."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST.", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.20", False),
    ("10.0.0.5", False), ("fe80::1", False), ("gateway.example", False),
])
def test_loopback_is_a_function_of_the_configured_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


async def test_pages_are_bounded_and_cover_every_id_once(tmp_path: Path,
                                                         broker: MosquittoBroker) -> None:
    count, size = 300, 500 * KiB
    cfg = site(tmp_path, broker, None)
    cfg.store_extra.update(dead_letter_max_bytes="1 GiB", dead_letter_payload_bytes=size)
    fill_store(cfg.workdir / "buffer.db", count, size)
    with GatewayProcess(cfg) as gw:
        await start(gw)
        base = gw.status_url + "/api/dead-letters"
        rss_before = gw.rss_bytes()
        rss_peak = rss_before
        seen: list[int] = []
        pages = 0
        after = 0
        while True:
            status, raw = await asyncio.to_thread(get, f"{base}?after={after}&limit=500")
            assert status == 200, raw[:200]
            rss_peak = max(rss_peak, gw.rss_bytes())
            doc = json.loads(raw)
            items = doc["dead_letters"]
            pages += 1
            # The byte budget holds (a little JSON framing aside) even at limit=500.
            assert len(raw) <= PAGE_MAX_BYTES + 1024, (pages, len(raw))
            assert items, "a page before the end must not be empty"
            for item in items:
                body = base64.b64decode(item["body_b64"])
                assert len(body) == item["body_bytes"] == size
                assert body[:8] == f"{item['id'] - 1:08d}".encode()
            seen += [item["id"] for item in items]
            if doc["next_after"] is None:
                break
            assert doc["next_after"] == items[-1]["id"]
            after = doc["next_after"]
        assert seen == list(range(1, count + 1))  # every id, once, in order
        assert pages >= count * size * 4 // 3 // PAGE_MAX_BYTES
        growth = rss_peak - rss_before
        # 150 MB of bodies went out; the process holds about one page at a time.
        assert growth < 32 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"

        # Without bodies the limit is what bounds a page.
        status, raw = await asyncio.to_thread(get, f"{base}?bodies=0&limit=120")
        doc = json.loads(raw)
        assert status == 200
        assert [i["id"] for i in doc["dead_letters"]] == list(range(1, 121))
        assert all("body_b64" not in i for i in doc["dead_letters"])
        assert doc["next_after"] == 120
        status, raw = await asyncio.to_thread(get, f"{base}?bodies=0&limit=500&after=290")
        doc = json.loads(raw)
        assert [i["id"] for i in doc["dead_letters"]] == list(range(291, 301))
        assert doc["next_after"] is None
        # Exactly a full last page: nothing follows, so no further page is announced.
        status, raw = await asyncio.to_thread(get, f"{base}?bodies=0&limit=10&after=290")
        assert json.loads(raw)["next_after"] is None
        status, raw = await asyncio.to_thread(get, f"{base}?bodies=0&kind=sink")
        assert json.loads(raw) == {"dead_letters": [], "next_after": None}


BAD_QUERIES = [
    ("after=1e23", "after"), ("after=-1", "after"), (f"after={2**70}", "after"),
    ("after=", "after"), ("after=1_000", "after"), ("limit=abc", "limit"),
    ("limit=0", "limit"), ("limit=1000", "limit"), ("limit=%205", "limit"),
    ("kind=event", "kind"), ("bodies=maybe", "bodies"), ("offset=3", "offset"),
]

BAD_IDS: list[Any] = [
    {"ids": [2**70]}, {"ids": [0]}, {"ids": [-1]}, {"ids": [True]}, {"ids": ["1"]},
    {"ids": [1.5]}, {"ids": []}, {"ids": list(range(1, 1002))}, {"ids": 1}, {}, [1],
]


async def test_odd_values_are_400_naming_the_parameter(tmp_path: Path,
                                                       broker: MosquittoBroker) -> None:
    token = tmp_path / "status.token"
    token.write_text(TOKEN + "\n", encoding="utf-8")
    cfg = site(tmp_path, broker, None, status_extra={"token_file": token})
    fill_store(cfg.workdir / "buffer.db", 3, 100)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with GatewayProcess(cfg) as gw:
        await start(gw)
        base = gw.status_url + "/api/dead-letters"
        for query, name in BAD_QUERIES:
            status, text = await asyncio.to_thread(get, f"{base}?{query}")
            assert status == 400, (query, status, text[:200])
            assert name in text.decode(), (query, text)
        for action in ("replay", "discard"):
            for doc in BAD_IDS:
                status, text = await asyncio.to_thread(
                    post, f"{base}/{action}", json.dumps(doc).encode(), auth)
                assert status == 400, (action, doc, status, text[:200])
                assert "ids" in text.decode(), (action, doc, text)
            status, text = await asyncio.to_thread(post, f"{base}/{action}", b"\xff{", auth)
            assert status == 400 and b"not JSON" in text
        # Still serving, and the dead letters untouched.
        status, raw = await asyncio.to_thread(get, f"{base}?bodies=0")
        assert status == 200
        assert [i["id"] for i in json.loads(raw)["dead_letters"]] == [1, 2, 3]
        status, text = await asyncio.to_thread(
            post, f"{base}/discard", json.dumps({"ids": [2]}).encode(), auth)
        assert (status, json.loads(text)) == (200, {"discarded": 1})
        assert not gw.log_events("http_error") and "Traceback" not in gw.log_tail(400)


# Bodies beyond loopback need the token: tests/test_gateway_status_tls.py (the config
# refuses such a host without a token file; no test binds beyond loopback).
