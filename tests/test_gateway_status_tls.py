"""The status server beyond loopback: HTTPS, and dead letter bodies behind the token.

The real status server (aiohttp) listens on 127.0.0.1 only. Its config may
*say* a non-loopback host (192.0.2.10, a documentation address never bound
here): that is what the server's rules look at, so the rules for "beyond
loopback" are exercised without ever listening beyond this machine.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import StatusConfig
from gateway.core.records import DeadLetter
from gateway.core.snapshot import GatewaySnapshot
from gateway.status import StatusServer, make_app
from simulators.broker import free_port
from simulators.certs import TestCa

TOKEN = "st4tus-t0ken"


class Source:
    """The gateway side of the status server: two dead letters, always ready."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.ready.set()
        self.stopping = False

    def snapshot(self) -> GatewaySnapshot:
        raise NotImplementedError("not used by these endpoints")

    async def dead_letters(self, *, sink: str | None, kind: str | None, limit: int,
                           after_id: int) -> list[DeadLetter]:
        items = [DeadLetter(i, "sink", "wms", None, f"ev-{i}", "pick", "422: bad",
                            f'{{"n":{i}}}'.encode(), {}, 0.0) for i in (1, 2)]
        return [d for d in items if d.id > after_id][:limit]

    async def with_store(self, fn: Any) -> Any:
        """Run ``fn`` on a real store holding two ingest dead letters (the operator routes)."""
        import tempfile

        from buffer.store import Store
        from gateway.core.records import IngestDeadLetter

        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "buffer.db", max_bytes=64 * 1024**2)
            try:
                store.append([[IngestDeadLetter(device="scan-01", reason="not_json: test",
                                                payload=f'{{"n":{i}}}'.encode(), context={})]
                              for i in (1, 2)])
                return fn(store)
            finally:
                store.close()

    async def replay_dead_letters(self, ids: list[int]) -> int:
        return 0

    async def discard_dead_letters(self, ids: list[int]) -> int:
        return 0


def fetch(url: str, ctx: ssl.SSLContext | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
async def https_status(tmp_path: Path) -> AsyncIterator[tuple[str, TestCa]]:
    ca = TestCa(tmp_path / "pki")
    cert = ca.issue("status", hosts=("127.0.0.1",), key_password=b"pw")
    (tmp_path / "pw").write_text("pw\n")
    cfg = StatusConfig(port=free_port(), cert_file=cert.cert_file, key_file=cert.key_file,
                       key_password_file=tmp_path / "pw")
    server = StatusServer(Source(), cfg)
    await server.start()
    try:
        yield f"https://127.0.0.1:{cfg.port}", ca
    finally:
        await server.close()


async def test_status_server_serves_https_with_its_certificate(
    https_status: tuple[str, TestCa]
) -> None:
    base, ca = https_status
    trusted = ssl.create_default_context(cafile=str(ca.cert_file))
    status, body = await asyncio.to_thread(fetch, base + "/healthz", trusted)
    assert (status, json.loads(body)) == (200, {"ok": True})
    # A client that does not trust the CA is refused by its own verification.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(fetch, base + "/healthz", ssl.create_default_context())
    # Plain HTTP on the HTTPS port gets nowhere.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(fetch, base.replace("https", "http") + "/healthz")


def test_beyond_loopback_without_token_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="is not a loopback address"):
        StatusConfig(host="192.0.2.10")
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        StatusConfig(cert_file=Path("/x.pem"))


async def test_bodies_beyond_loopback_need_the_token(tmp_path: Path) -> None:
    token = tmp_path / "status.token"
    token.write_text(TOKEN + "\n")
    cfg = StatusConfig(host="192.0.2.10", token_file=token)  # what the rules look at
    runner = web.AppRunner(make_app(Source(), cfg), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()  # where it really listens
    base = f"http://127.0.0.1:{port}/api/dead-letters"
    try:
        status, _ = await asyncio.to_thread(fetch, base)
        assert status == 401
        status, _ = await asyncio.to_thread(fetch, base, None, {"Authorization": "Bearer no"})
        assert status == 401
        status, raw = await asyncio.to_thread(fetch, base + "?bodies=0")
        assert status == 200
        assert all("body_b64" not in i for i in json.loads(raw)["dead_letters"])
        status, raw = await asyncio.to_thread(
            fetch, base, None, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        assert [i["id"] for i in json.loads(raw)["dead_letters"]] == [1, 2]
        assert all("body_b64" in i for i in json.loads(raw)["dead_letters"])
    finally:
        await runner.cleanup()
