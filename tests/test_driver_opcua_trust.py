"""OPC UA server certificates checked against a trust folder; the two newer policies.

The sorter simulator offers Basic256Sha256, Aes128_Sha256_RsaOaep and
Aes256_Sha256_RsaPss endpoints with a self-signed certificate. The gateway's
device has a trust folder: the unknown certificate is written to rejected/
and the device shows an alert telling how to trust it; once the operator
moves the file to trusted/, the next retry connects and events flow, over
Aes256_Sha256_RsaPss. A second device speaks Aes128_Sha256_RsaOaep in mode
Sign with a password: it works and says that the password is not encrypted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from e2e import start, wait_until
from test_driver_opcua_security import client_and_password
from test_gateway_e2e_opcua import DEVICE, device, expected_ids, gateway, scans_logged

from simulators.harness.sorter import SorterProcess
from simulators.wms import WmsSimulator

SIGNED = "sorter-signed"


async def test_unknown_server_certificate_is_rejected_until_moved_to_trusted(
    tmp_path: Path, wms: WmsSimulator
) -> None:
    cert, key, password = await client_and_password(tmp_path)
    trust = tmp_path / "opcua-pki"
    sorter = SorterProcess(tmp_path / "sorter", rate=50, total=40, seed=3, extra=[
        "--security", "sign-and-encrypt", "--certs", str(tmp_path / "server-certs"),
        "--user", "operator", "--password-file", str(password)])
    common = dict(certificate_file=cert, private_key_file=key, username="operator",
                  password_file=password, trust_folder=trust)
    devices = [
        device(sorter.endpoint, security_policy="Aes256_Sha256_RsaPss",
               security_mode="SignAndEncrypt", **common),
    ]
    with sorter, gateway(tmp_path, wms, devices) as gw:
        await asyncio.to_thread(sorter.start)
        await start(gw)

        def untrusted() -> dict[str, str] | None:
            alerts = [a for a in gw.status()["alerts"] if DEVICE in a["message"]]
            return next((a for a in alerts if "is not trusted" in a["message"]), None)

        alert = await wait_until(untrusted, 20, "the untrusted-certificate alert")
        rejected = sorted((trust / "rejected").iterdir())
        assert len(rejected) == 1, rejected
        server_der = (tmp_path / "server-certs" / "server_cert.der").read_bytes()
        assert rejected[0].read_bytes() == server_der
        alert = alert["message"]
        assert str(rejected[0]) in alert and f"move that file to {trust / 'trusted'}/" in alert
        assert gw.status()["devices"][DEVICE]["connected"] is False
        assert not wms.events, "nothing may flow before the certificate is trusted"
        logged = [e for e in gw.log_events("device_unavailable") if e["device"] == DEVICE]
        assert len(logged) == 1 and "is not trusted" in logged[0]["error"]

        # The operator trusts it: the next retry connects, without a restart.
        rejected[0].rename(trust / "trusted" / rejected[0].name)
        await wait_until(lambda: gw.status()["devices"][DEVICE]["connected"], 20,
                         "connected once trusted")
        await wait_until(lambda: scans_logged(sorter) == 40, 20, "40 items logged")
        want = expected_ids(sorter.read_log())
        ours = lambda: {r["event"]["event_id"] for r in wms.events  # noqa: E731
                        if r["event"]["device"] == DEVICE}
        await wait_until(lambda: ours() >= want, 20, "every event over Aes256_Sha256_RsaPss")
        status = gw.status()
        assert status["devices"][DEVICE]["security"] == "Aes256_Sha256_RsaPss/SignAndEncrypt"
        assert not any(DEVICE in a["message"] for a in status["alerts"]), status["alerts"]


async def test_aes128_sign_with_password_works_and_warns(tmp_path: Path,
                                                         wms: WmsSimulator) -> None:
    cert, key, password = await client_and_password(tmp_path)
    sorter = SorterProcess(tmp_path / "sorter", rate=50, total=20, seed=4, extra=[
        "--security", "sign", "--certs", str(tmp_path / "server-certs"),
        "--user", "operator", "--password-file", str(password)])
    devices = [device(sorter.endpoint, device=SIGNED, security_policy="Aes128_Sha256_RsaOaep",
                      security_mode="Sign", certificate_file=cert, private_key_file=key,
                      username="operator", password_file=password,
                      server_certificate_file=tmp_path / "server-certs" / "server_cert.der")]
    with sorter, gateway(tmp_path, wms, devices) as gw:
        await asyncio.to_thread(sorter.start)
        await start(gw)
        await wait_until(lambda: gw.status()["devices"][SIGNED]["connected"], 20, "connected")
        await wait_until(lambda: scans_logged(sorter) == 20, 20, "20 items logged")
        want = expected_ids(sorter.read_log(), SIGNED)
        ours = lambda: {r["event"]["event_id"] for r in wms.events  # noqa: E731
                        if r["event"]["device"] == SIGNED}
        await wait_until(lambda: ours() >= want, 20, "every event over Aes128_Sha256_RsaOaep")
        alerts = [a["message"] for a in gw.status()["alerts"] if SIGNED in a["message"]]
        assert len(alerts) == 1 and "crosses a channel that is not encrypted" in alerts[0], alerts
        warned = gw.log_events("opcua_security_warning")
        assert len(warned) == 1 and warned[0]["device"] == SIGNED
