"""Building, connecting and closing the asyncua client of one device.

Everything that waits on the network here runs under a timeout from the
device config. Secrets come from files only (``password_file``); the
certificate's application URI is used as the client's, as OPC UA requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies, uacrypto
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drivers.opcua.config import OpcuaDevice
from drivers.opcua.trust import TrustFolder, UntrustedCertificate
from gateway.core.config import read_secret

APPLICATION_NAME = "warehouse-gateway"
DEFAULT_APPLICATION_URI = "urn:warehouse-gateway:opcua-client"



def quiet_library_logs() -> None:
    """Silence asyncua's own logs (the driver reports availability once per change).

    asyncua logs every failed publish and reconnect step at warning or error
    level: a server restart would print dozens of lines per attempt.
    """
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)


class ConnectionLost(Exception):
    """The session ended (transport closed, server shut down, status change)."""


def certificate_uri(path: Path) -> str | None:
    """The application URI in a certificate's SubjectAltName, if any."""
    data = path.read_bytes()
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError:
        cert = x509.load_pem_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def connect(dev: OpcuaDevice) -> Client:
    """A connected, activated client session for ``dev`` (raises on failure or timeout)."""
    client = Client(dev.endpoint, timeout=dev.request_timeout,
                    watchdog_intervall=min(1.0, dev.request_timeout))
    client.name = client.description = APPLICATION_NAME
    client.application_uri = DEFAULT_APPLICATION_URI
    client.session_timeout = int(dev.session_timeout * 1000)
    client.secure_channel_timeout = 3_600_000
    if dev.username is not None:
        client.set_user(dev.username)
        if dev.password_file is not None:
            client.set_password(read_secret(dev.password_file, "password"))
    try:
        async with asyncio.timeout(dev.connect_timeout):
            if dev.security_policy != "None":
                await _secure(client, dev)
            await client.connect(auto_reconnect=False)
    except BaseException:
        await close(client, 1.0)
        raise
    return client


#: asyncua's policy of each configured ``security_policy``.
POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}


async def _secure(client: Client, dev: OpcuaDevice) -> None:
    """Set the secure channel up: our certificate, and the server's once it is trusted.

    A pinned ``server_certificate_file`` is the only certificate accepted
    (asyncua refuses a session whose server presents another). Otherwise the
    server's certificate comes from its endpoint list and, with a
    ``trust_folder``, must be trusted there before anything secret is sent.
    """
    assert dev.certificate_file is not None and dev.private_key_file is not None
    policy = POLICIES[dev.security_policy]
    client.application_uri = (dev.application_uri or certificate_uri(dev.certificate_file)
                              or DEFAULT_APPLICATION_URI)
    mode = getattr(ua.MessageSecurityMode, dev.security_mode)
    server_cert: str | bytes | None = (str(dev.server_certificate_file)
                                       if dev.server_certificate_file is not None else None)
    if server_cert is None and dev.trust_folder is not None:
        endpoints = await client.connect_and_get_server_endpoints()
        endpoint = Client.find_endpoint(endpoints, mode, policy.URI)
        cert = uacrypto.x509_from_der(endpoint.ServerCertificate)  # type: ignore[no-untyped-call]
        if cert is None:
            raise UntrustedCertificate(f"{dev.endpoint} offers no server certificate for "
                                       f"{dev.security_policy}/{dev.security_mode}")
        der: bytes = cert.public_bytes(serialization.Encoding.DER)
        await asyncio.to_thread(TrustFolder(dev.trust_folder).check, der, dev.endpoint)
        server_cert = der
    await client.set_security(policy, str(dev.certificate_file), str(dev.private_key_file),
                              server_certificate=server_cert, mode=mode)


async def close(client: Client, limit_s: float) -> None:
    """Close session and channel within ``limit_s`` seconds; drop the socket in any case."""
    with contextlib.suppress(Exception, TimeoutError):
        async with asyncio.timeout(limit_s):
            await client.disconnect()
    with contextlib.suppress(Exception):
        client.uaclient.disconnect_socket()
