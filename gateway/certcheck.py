"""``check``'s look at every certificate and key file a config names.

One line per file: it parses (PEM or DER), it is valid now (not expired, not
yet valid), a private key opens (with its password file) and matches its
certificate. Existence and readability were already checked when the config
was loaded (``MissingFilesError``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, HttpSinkConfig
from gateway.core.config import read_secret

#: A certificate expiring sooner than this is reported as a warning (still ok).
EXPIRY_WARNING = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class FileCheck:
    """The verdict on one file: ``where`` is its key path in the config."""

    where: str
    path: Path
    ok: bool
    detail: str

    def line(self) -> str:
        """``<key path>: <file>: ok — ...`` or ``<key path>: <file>: <problem>``."""
        return f"{self.where}: {str(self.path)!r}: {'ok — ' if self.ok else ''}{self.detail}"


@dataclass(frozen=True, slots=True)
class _Pair:
    where: str
    cert: Path | None
    key: Path | None = None
    password: Path | None = None
    cert_key: str = "cert_file"
    key_key: str = "key_file"
    bundle: bool = False  # a CA bundle: several certificates, no key


def _pairs(cfg: GatewayConfig) -> list[_Pair]:
    out: list[_Pair] = []

    def client(where: str, m: Any) -> None:
        if m.ca_file is not None and not m.insecure:
            out.append(_Pair(where, m.ca_file, cert_key="ca_file", bundle=True))
        if m.cert_file is not None:
            out.append(_Pair(where, m.cert_file, m.key_file, m.key_password_file))

    for i, b in enumerate(cfg.brokers):
        if b.tls:
            client(f"brokers[{i}]", b)
    for i, s in enumerate(cfg.sinks):
        if isinstance(s, HttpSinkConfig) and s.url.startswith("https://"):
            client(f"sinks[{i}]", s)
    for i, d in enumerate(cfg.devices):
        cert = getattr(d, "certificate_file", None)
        if cert is not None:
            out.append(_Pair(f"devices[{i}]", cert, getattr(d, "private_key_file", None),
                             cert_key="certificate_file", key_key="private_key_file"))
        server = getattr(d, "server_certificate_file", None)
        if server is not None:
            out.append(_Pair(f"devices[{i}]", server, cert_key="server_certificate_file"))
    st = cfg.status
    if st.enabled and st.cert_file is not None:
        out.append(_Pair("status", st.cert_file, st.key_file, st.key_password_file))
    return out


def _load_certs(path: Path) -> list[Any]:
    from cryptography import x509

    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]


def _load_key(path: Path, password: Path | None) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = path.read_bytes()
    secret = read_secret(password, "key password").encode() if password is not None else None
    if b"-----BEGIN" in data:
        return serialization.load_pem_private_key(data, secret)
    return serialization.load_der_private_key(data, secret)


def _validity(cert: Any, now: dt.datetime) -> tuple[bool, str]:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    subject = cert.subject.rfc4514_string() or "(no subject)"
    if now < start:
        return False, f"{subject} is not valid before {start:%Y-%m-%d %H:%M} UTC (check the clock)"
    if now > end:
        return False, f"{subject} expired on {end:%Y-%m-%d %H:%M} UTC"
    left = end - now
    soon = " — renew soon" if left < EXPIRY_WARNING else ""
    return True, f"{subject}, expires {end:%Y-%m-%d} ({left.days} days){soon}"


def _public_bytes(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    raw: bytes = public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return raw


def _check_pair(p: _Pair, now: dt.datetime) -> list[FileCheck]:
    assert p.cert is not None
    where = f"{p.where}.{p.cert_key}"
    try:
        certs = _load_certs(p.cert)
    except (ValueError, TypeError) as err:
        return [FileCheck(where, p.cert, False,
                          f"not a certificate (PEM or DER): {str(err)[:120]}")]
    if not certs:
        return [FileCheck(where, p.cert, False, "holds no certificate")]
    checks = [_validity(c, now) for c in certs]
    if p.bundle:
        bad = [d for ok, d in checks if not ok]
        if bad:
            return [FileCheck(where, p.cert, False, f"CA certificate {bad[0]}")]
        soonest = min(range(len(certs)), key=lambda i: certs[i].not_valid_after_utc)
        many = f"{len(certs)} CA certificates, the first to expire: " if len(certs) > 1 else "CA "
        return [FileCheck(where, p.cert, True, many + checks[soonest][1])]
    ok, detail = checks[0]
    out = [FileCheck(where, p.cert, ok, detail)]
    if p.key is None:
        return out
    kwhere = f"{p.where}.{p.key_key}"
    try:
        key = _load_key(p.key, p.password)
    except TypeError:
        return [*out, FileCheck(kwhere, p.key, False,
                                "the key is encrypted: set key_password_file")]
    except ValueError as err:
        reason = ("cannot be decrypted with key_password_file" if p.password is not None
                  else f"not a private key (PEM or DER): {str(err)[:120]}")
        return [*out, FileCheck(kwhere, p.key, False, reason)]
    if _public_bytes(key.public_key()) != _public_bytes(certs[0].public_key()):
        return [*out, FileCheck(kwhere, p.key, False,
                                f"is not the key of {p.cert_key} {str(p.cert)!r}")]
    return [*out, FileCheck(kwhere, p.key, True, f"matches {p.cert_key}")]


def check_certificates(cfg: GatewayConfig, now: dt.datetime | None = None) -> list[FileCheck]:
    """Every certificate, CA and key file of ``cfg``, one verdict each, in config order."""
    when = now or dt.datetime.now(dt.UTC)
    out: list[FileCheck] = []
    for p in _pairs(cfg):
        out.extend(_check_pair(p, when))
    return out
