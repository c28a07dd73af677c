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
from asyncua.crypto import security_policies
from cryptography import x509

from drivers.opcua.config import OpcuaDevice
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
            if dev.security_policy == "Basic256Sha256":
                assert dev.certificate_file is not None and dev.private_key_file is not None
                client.application_uri = (dev.application_uri
                                          or certificate_uri(dev.certificate_file)
                                          or DEFAULT_APPLICATION_URI)
                mode = getattr(ua.MessageSecurityMode, dev.security_mode)
                server_cert = (str(dev.server_certificate_file)
                               if dev.server_certificate_file is not None else None)
                # Without a server certificate this asks the server's endpoint list for it.
                await client.set_security(
                    security_policies.SecurityPolicyBasic256Sha256,
                    str(dev.certificate_file), str(dev.private_key_file),
                    server_certificate=server_cert, mode=mode)
            await client.connect(auto_reconnect=False)
    except BaseException:
        await close(client, 1.0)
        raise
    return client


async def close(client: Client, limit_s: float) -> None:
    """Close session and channel within ``limit_s`` seconds; drop the socket in any case."""
    with contextlib.suppress(Exception, TimeoutError):
        async with asyncio.timeout(limit_s):
            await client.disconnect()
    with contextlib.suppress(Exception):
        client.uaclient.disconnect_socket()
