"""TLS settings shared by every client and server the gateway runs.

``ClientTls`` is the config block of a TLS client (an MQTT broker, an HTTPS
sink): a CA file, an optional client certificate and key (mutual TLS), the
key's password from a file, a protocol version floor, and ``insecure`` for
commissioning only. ``client_context`` and ``server_context`` build the
``ssl.SSLContext``; ``describe_tls_error`` turns what OpenSSL says into one
line an operator can act on.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import model_validator

from gateway.core.config import Model, read_secret

TlsVersion = Literal["1.2", "1.3"]
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

#: Warning shown at start and on the status page while ``insecure`` is on.
INSECURE_WARNING = ("TLS certificate verification is OFF (insecure = true): anyone on the "
                    "path can impersonate the server; for commissioning only")


class ClientTls(Model):
    """TLS keys of a client connection (the broker/sink table holds them)."""

    #: CA bundle (PEM) the server's certificate must chain to; system store if unset.
    ca_file: Path | None = None
    #: Client certificate (PEM, may hold the chain) for mutual TLS, with its key.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: File holding the password of an encrypted ``key_file``.
    key_password_file: Path | None = None
    #: Lowest TLS version accepted.
    tls_version: TlsVersion = "1.2"
    #: Skip certificate and host name verification (commissioning only; loud).
    insecure: bool = False

    @model_validator(mode="after")
    def _tls_pairs(self) -> ClientTls:
        problems: list[str] = []
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("cert_file and key_file go together (mutual TLS); set both or "
                            "neither")
        if self.key_password_file is not None and self.key_file is None:
            problems.append("key_password_file is set but key_file is not")
        if self.insecure and self.ca_file is not None:
            problems.append("insecure = true ignores ca_file; remove one of them")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def tls_keys_set(self) -> list[str]:
        """The TLS keys set to something other than their default."""
        return [k for k in ClientTls.model_fields if k in self.model_fields_set]


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """A client context: verified against ``ca_file`` (or the system store), host name
    checked, with the client certificate when one is configured.

    Raises ``ValueError`` naming the file when a certificate or key cannot be loaded.
    """
    if tls.insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = ssl.create_default_context(
                cafile=str(tls.ca_file) if tls.ca_file is not None else None)
        except (ssl.SSLError, OSError) as err:
            raise ValueError(f"ca_file {str(tls.ca_file)!r} holds no usable CA "
                             f"certificate: {_reason(err)}") from None
    ctx.minimum_version = _VERSIONS[tls.tls_version]
    if tls.cert_file is not None and tls.key_file is not None:
        load_chain(ctx, tls.cert_file, tls.key_file, tls.key_password_file)
    return ctx


def server_context(cert_file: Path, key_file: Path,
                   key_password_file: Path | None = None) -> ssl.SSLContext:
    """A server context for the status server (TLS 1.2 or later)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, cert_file, key_file, key_password_file)
    return ctx


def load_chain(ctx: ssl.SSLContext, cert_file: Path, key_file: Path,
               key_password_file: Path | None) -> None:
    """Load a certificate and key into ``ctx``; ``ValueError`` says which is wrong."""
    password = (read_secret(key_password_file, "key password")
                if key_password_file is not None else None)
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file), password=password or "")
    except (ssl.SSLError, OSError) as err:
        reason = _reason(err)
        if "KEY_VALUES_MISMATCH" in str(err).upper():
            what = f"key_file {str(key_file)!r} is not the key of cert_file {str(cert_file)!r}"
        elif "BAD_DECRYPT" in str(err).upper() or "bad decrypt" in str(err).lower():
            what = f"key_file {str(key_file)!r} cannot be decrypted with key_password_file"
        else:
            what = f"cert_file {str(cert_file)!r} / key_file {str(key_file)!r} cannot be loaded"
        raise ValueError(f"{what}: {reason}") from None


def _reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError) and err.reason:
        return str(err.reason).lower().replace("_", " ")
    return getattr(err, "strerror", None) or str(err)


#: OpenSSL verify codes an operator meets, and what to do about each.
_NOT_OURS = "it is not signed by a CA in ca_file: set ca_file to the CA that signed it"
_VERIFY_HINTS = {
    2: _NOT_OURS, 18: _NOT_OURS, 19: _NOT_OURS, 20: _NOT_OURS, 21: _NOT_OURS,
    10: "it has expired: renew the server's certificate (or check this machine's clock)",
    9: "it is not valid yet: check this machine's clock",
    62: "it does not name this host: connect by a name or address the certificate holds",
    64: "it does not name this host: connect by a name or address the certificate holds",
}


def describe_tls_error(err: BaseException, peer: str) -> str | None:
    """One line naming a TLS failure with ``peer`` (``broker b1 (host:port)``), or ``None``
    when ``err`` is not a TLS problem."""
    if isinstance(err, ssl.SSLCertVerificationError):
        code = err.verify_code
        message = err.verify_message or _reason(err)
        hint = _VERIFY_HINTS.get(code, "check ca_file and the server's certificate")
        return f"TLS: {peer} presented a certificate that failed verification ({message}): {hint}"
    if isinstance(err, ssl.SSLError):
        text = f"{err.reason or ''} {err}".upper()
        if "CERTIFICATE_REQUIRED" in text or ("HANDSHAKE_FAILURE" in text and "ALERT" in text):
            return (f"TLS: {peer} requires a client certificate: set cert_file and key_file "
                    f"({_reason(err)})")
        if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "CERTIFICATE_UNKNOWN" in text:
            return (f"TLS: {peer} refused the gateway's client certificate: it is not signed "
                    f"by a CA the server trusts, or has expired ({_reason(err)})")
        if "WRONG_VERSION_NUMBER" in text or "PACKET_LENGTH_TOO_LONG" in text:
            return f"TLS: {peer} does not speak TLS on this port ({_reason(err)})"
        if "UNSUPPORTED_PROTOCOL" in text or "PROTOCOL_VERSION" in text:
            return (f"TLS: {peer} does not offer the TLS version required by tls_version "
                    f"({_reason(err)})")
        return f"TLS error with {peer}: {_reason(err)}"
    return None
