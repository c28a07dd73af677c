"""MQTT over TLS against a real Mosquitto listener with ``require_certificate true``.

The test generates its own CA; the broker's certificate names 127.0.0.1 and
localhost only, so connecting to 127.0.0.2 (also loopback) is a host name
mismatch. Each way of getting it wrong is one clear ``last_error`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from gateway.config import BrokerConfig
from gateway.transport.link import MqttLink
from simulators.broker import BrokerTls, MosquittoBroker
from simulators.certs import TestCa


@pytest.fixture
def pki(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: TestCa) -> Iterator[MosquittoBroker]:
    server = pki.issue("broker", hosts=("127.0.0.1", "localhost"))
    tls = BrokerTls(server.cert_file, server.key_file, pki.cert_file, require_certificate=True)
    # Listen on every loopback address (127.0.0.0/8), so 127.0.0.2 reaches it too.
    with MosquittoBroker(tmp_path / "mosquitto", host="127.0.0.1", tls=tls) as b:
        yield b


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[MqttLink]:
    task = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task


def broker_cfg(b: MosquittoBroker, **kw: Any) -> BrokerConfig:
    return BrokerConfig(id="b1", host=kw.pop("host", b.host), port=b.port, tls=True, **kw)


async def first_error(link: MqttLink) -> str:
    async with running(link):
        await wait_until(lambda: link.last_error is not None, 10, "a connect failure")
        assert not link.connected.is_set()
        error = link.last_error
    assert error is not None
    return error


async def test_mutual_tls_connects_and_publishes(tls_broker: MosquittoBroker,
                                                 pki: TestCa) -> None:
    client = pki.issue("gateway", hosts=(), client=True, key_password=b"k3y")
    (pki.folder / "key-password").write_text("k3y\n")
    cfg = broker_cfg(tls_broker, ca_file=pki.cert_file, cert_file=client.cert_file,
                     key_file=client.key_file, key_password_file=pki.folder / "key-password",
                     tls_version="1.3")
    link = MqttLink(cfg, "tls-ok", persistent=False)
    async with running(link):
        await wait_until(link.connected.is_set, 10, "connected over mutual TLS",
                         state=lambda: link.last_error)
        await link.publish("t/tls", b"hello", 1)
        assert link.alerts() == []


async def test_wrong_ca_is_one_clear_message(tls_broker: MosquittoBroker, pki: TestCa,
                                             tmp_path: Path) -> None:
    other = TestCa(tmp_path / "other", name="other")
    client = pki.issue("gateway", hosts=(), client=True)
    cfg = broker_cfg(tls_broker, ca_file=other.cert_file, cert_file=client.cert_file,
                     key_file=client.key_file)
    error = await first_error(MqttLink(cfg, "tls-wrong-ca", persistent=False))
    assert error.startswith(f"TLS: broker b1 (127.0.0.1:{tls_broker.port}) presented a "
                            "certificate that failed verification"), error
    assert "not signed by a CA in ca_file" in error, error
    assert "\n" not in error


async def test_no_client_certificate_is_one_clear_message(tls_broker: MosquittoBroker,
                                                          pki: TestCa) -> None:
    cfg = broker_cfg(tls_broker, ca_file=pki.cert_file)
    error = await first_error(MqttLink(cfg, "tls-no-client-cert", persistent=False))
    assert error.startswith(f"TLS: broker b1 (127.0.0.1:{tls_broker.port}) requires a client "
                            "certificate: set cert_file and key_file"), error


async def test_wrong_host_name_is_one_clear_message(tls_broker: MosquittoBroker,
                                                    pki: TestCa, tmp_path: Path) -> None:
    # The same broker, reached through a loopback address its certificate does not name.
    client = pki.issue("gateway", hosts=(), client=True)
    b2 = MosquittoBroker(tmp_path / "mosquitto-2", host="127.0.0.2",
                         tls=BrokerTls(*_server(pki), pki.cert_file, require_certificate=True))
    with b2:
        cfg = broker_cfg(b2, ca_file=pki.cert_file, cert_file=client.cert_file,
                         key_file=client.key_file)
        error = await first_error(MqttLink(cfg, "tls-wrong-host", persistent=False))
    assert "does not name this host" in error, error
    assert "127.0.0.2" in error, error


def _server(pki: TestCa) -> tuple[Path, Path]:
    issued = pki.issue("broker-localhost-only", hosts=("localhost", "127.0.0.1"))
    return issued.cert_file, issued.key_file


async def test_insecure_connects_and_says_so(tls_broker: MosquittoBroker, pki: TestCa,
                                             tmp_path: Path) -> None:
    client = pki.issue("gateway", hosts=(), client=True)
    cfg = broker_cfg(tls_broker, insecure=True, cert_file=client.cert_file,
                     key_file=client.key_file)
    link = MqttLink(cfg, "tls-insecure", persistent=False)
    async with running(link):
        await wait_until(link.connected.is_set, 10, "connected without verification",
                         state=lambda: link.last_error)
        alerts = link.alerts()
    assert len(alerts) == 1 and "verification is OFF (insecure = true)" in alerts[0], alerts


def test_tls_keys_without_tls_are_refused() -> None:
    with pytest.raises(ValueError, match="ca_file set but tls is false"):
        BrokerConfig(id="b1", ca_file=Path("/x/ca.pem"))
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        BrokerConfig(id="b1", tls=True, cert_file=Path("/x/c.pem"))
