"""HttpSink over HTTPS against the WMS simulator serving TLS with a test CA.

A per-sink ``ca_file``, a client certificate the WMS requires, and what a
site engineer sees when the CA is wrong or the client certificate missing:
one alert naming the certificate problem, never a raw aiohttp error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_sink_http import make_rows
from waiting import wait_until

from gateway.config import HttpSinkConfig
from gateway.sinks.http import HttpSink
from simulators.certs import TestCa
from simulators.wms import WmsSimulator, server_ssl_context


@pytest.fixture
def pki(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


@contextlib.asynccontextmanager
async def https_wms(pki: TestCa, *, client_certs: bool) -> AsyncIterator[WmsSimulator]:
    server = pki.issue("wms", hosts=("127.0.0.1",))
    ctx = server_ssl_context(server.cert_file, server.key_file,
                             pki.cert_file if client_certs else None)
    async with WmsSimulator(ssl_context=ctx) as sim:
        yield sim


def sink_for(wms: WmsSimulator, **tls: Any) -> HttpSink:
    return HttpSink(HttpSinkConfig(id="wms", type="http", url=wms.url, backoff_initial=0.05,
                                   backoff_max=0.2, timeout=5, **tls))


async def test_per_sink_ca_and_client_certificate_deliver(pki: TestCa) -> None:
    client = pki.issue("gateway", hosts=(), client=True)
    async with https_wms(pki, client_certs=True) as wms:
        assert wms.url.startswith("https://")
        sink = sink_for(wms, ca_file=pki.cert_file, cert_file=client.cert_file,
                        key_file=client.key_file, tls_version="1.3")
        try:
            rows = make_rows(5)
            async with asyncio.timeout(20):
                assert await sink.deliver(rows) == []
            assert wms.accepted_ids() == {r.event_id for r in rows}
            assert sink.snapshot()["alert"] is None
        finally:
            await sink.close()


async def alert_of(sink: HttpSink) -> str:
    task = asyncio.create_task(sink.deliver(make_rows(1)))
    try:
        await wait_until(lambda: sink.snapshot()["alert"], 10, "a TLS alert",
                         state=lambda: sink.snapshot()["last_error"])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sink.close()
    alert = sink.snapshot()["alert"]
    assert isinstance(alert, str)
    return alert


async def test_wrong_ca_is_one_alert_naming_the_certificate_problem(pki: TestCa,
                                                                    tmp_path: Path) -> None:
    other = TestCa(tmp_path / "other", name="other")
    async with https_wms(pki, client_certs=False) as wms:
        alert = await alert_of(sink_for(wms, ca_file=other.cert_file))
        assert wms.accepted_ids() == set()
    assert alert.startswith("TLS: sink wms (127.0.0.1) presented a certificate that failed "
                            "verification"), alert
    assert "not signed by a CA in ca_file" in alert
    assert "aiohttp" not in alert and "Cannot connect" not in alert


async def test_missing_client_certificate_is_named(pki: TestCa) -> None:
    async with https_wms(pki, client_certs=True) as wms:
        alert = await alert_of(sink_for(wms, ca_file=pki.cert_file))
    assert "client certificate, set cert_file and key_file" in alert, alert


def test_tls_keys_need_an_https_url() -> None:
    with pytest.raises(ValueError, match="ca_file set but url is not https://"):
        HttpSinkConfig(id="w", type="http", url="http://x/api", ca_file=Path("/ca.pem"))
