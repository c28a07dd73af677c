"""OPC UA with Basic256Sha256 SignAndEncrypt and a username/password, end to end.

The simulator generates its server certificate on first start; the gateway's
client certificate is generated here into ``tmp_path``. A second device with
a wrong password shows how a refused login looks to a site engineer.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography.x509.oid import ExtendedKeyUsageOID
from e2e import alert_messages, start, wait_until
from test_gateway_e2e_opcua import DEVICE, device, expected_ids, gateway, scans_logged

from simulators.harness.sorter import SorterProcess
from simulators.wms import WmsSimulator

CLIENT_URI = "urn:warehouse-gateway:test-client"


async def client_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed client application certificate (DER) and key (PEM)."""
    cert, key = folder / "gateway_cert.der", folder / "gateway_key.pem"
    await cert_gen.setup_self_signed_certificate(
        key, cert, CLIENT_URI, socket.gethostname(), [ExtendedKeyUsageOID.CLIENT_AUTH], {})
    return cert, key


async def test_sign_and_encrypt_with_user_delivers_and_wrong_password_alerts(
    tmp_path: Path, wms: WmsSimulator
) -> None:
    (tmp_path / "client").mkdir()
    cert, key = await client_certificate(tmp_path / "client")
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("guess\n")
    sorter = SorterProcess(tmp_path / "sorter", rate=50, total=60, seed=2, extra=[
        "--security", "sign-and-encrypt", "--certs", str(tmp_path / "server-certs"),
        "--user", "operator", "--password-file", str(password)])
    secure = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt",
                  certificate_file=cert, private_key_file=key, username="operator")
    devices = [
        device(sorter.endpoint, password_file=password,
               server_certificate_file=tmp_path / "server-certs" / "server_cert.der",
               **secure),
        # No server certificate here: the driver takes it from the endpoint list.
        device(sorter.endpoint, device="sorter-wrong-password", password_file=wrong,
               **secure),
    ]
    with sorter, gateway(tmp_path, wms, devices) as gw:
        await asyncio.to_thread(sorter.start)
        await start(gw)
        await wait_until(lambda: scans_logged(sorter) == 60, 20, "60 items logged")
        want = expected_ids(sorter.read_log())
        ours = lambda: {r["event"]["event_id"] for r in wms.events  # noqa: E731
                        if r["event"]["device"] == DEVICE}
        await wait_until(lambda: ours() >= want, 20, "every event over the secure channel")
        assert ours() == want
        status = gw.status()
        assert status["devices"][DEVICE]["connected"] is True
        assert status["devices"][DEVICE]["security"] == "Basic256Sha256/SignAndEncrypt"
        refused = status["devices"]["sorter-wrong-password"]
        assert refused["connected"] is False
        assert "BadUserAccessDenied" in refused["last_error"]
        assert refused["sessions"] == 0
        assert any("sorter-wrong-password" in a and "BadUserAccessDenied" in a
                   for a in alert_messages(status))
        logged = [e for e in gw.log_events("device_unavailable")
                  if e["device"] == "sorter-wrong-password"]
        assert len(logged) == 1, "a refused login is logged once, not per retry"
