"""The OPC UA trust folder: ``trusted/`` and ``rejected/``, as other OPC UA stacks keep them.

A server's certificate is trusted when the same certificate is in
``trusted/`` or a CA certificate there issued it, and it is valid now. An
unknown certificate is written to ``rejected/`` (named by its subject and
SHA-1 thumbprint, which OPC UA tools show) and the connection is refused
with a message telling the operator how to trust it: move that file to
``trusted/``. The folder is read again at every connect, so a moved file
takes effect at the next retry, without a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

_SUFFIXES = {".der", ".pem", ".crt", ".cer"}


class UntrustedCertificate(Exception):
    """The server's certificate is not trusted (the message says what to do)."""


def thumbprint(der: bytes) -> str:
    """SHA-1 thumbprint, upper-case hex (as OPC UA tools show it)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def _load(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            return list(x509.load_pem_x509_certificates(data))
        return [x509.load_der_x509_certificate(data)]
    except (OSError, ValueError):
        return []  # not a certificate: ignored, as a stray file in the folder


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string() or "server"


class TrustFolder:
    """``<folder>/trusted`` and ``<folder>/rejected`` (created when missing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.trusted = folder / "trusted"
        self.rejected = folder / "rejected"

    def _trusts(self, cert: x509.Certificate, der: bytes) -> bool:
        for path in sorted(self.trusted.iterdir()):
            if path.suffix.lower() not in _SUFFIXES or not path.is_file():
                continue
            for known in _load(path):
                if known.public_bytes(serialization.Encoding.DER) == der:
                    return True
                try:
                    cert.verify_directly_issued_by(known)
                except Exception:  # a wrong issuer, signature or key type: not issued by it
                    continue
                return True
        return False

    def check(self, der: bytes, endpoint: str, now: dt.datetime | None = None) -> None:
        """Return when the server certificate ``der`` is trusted; raise otherwise."""
        self.trusted.mkdir(parents=True, exist_ok=True)
        self.rejected.mkdir(parents=True, exist_ok=True)
        cert = x509.load_der_x509_certificate(der)
        when = now or dt.datetime.now(dt.UTC)
        print_ = thumbprint(der)
        if self._trusts(cert, der):
            if when > cert.not_valid_after_utc:
                raise UntrustedCertificate(
                    f"server certificate of {endpoint} ({_subject(cert)}, thumbprint {print_}) "
                    f"expired on {cert.not_valid_after_utc:%Y-%m-%d}: the server needs a new one")
            if when < cert.not_valid_before_utc:
                raise UntrustedCertificate(
                    f"server certificate of {endpoint} ({_subject(cert)}) is not valid before "
                    f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check the clocks")
            return
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", _subject(cert))[:60]
        saved = self.rejected / f"{safe} [{print_}].der"
        if not saved.exists():
            saved.write_bytes(der)
        raise UntrustedCertificate(
            f"server certificate of {endpoint} ({_subject(cert)}, SHA-1 thumbprint {print_}) "
            f"is not trusted; it was saved to {saved}: after checking the thumbprint with the "
            f"server's owner, move that file to {self.trusted}/ to trust it (the next retry "
            "connects)")
