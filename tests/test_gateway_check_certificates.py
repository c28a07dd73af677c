"""``check`` looks at every certificate and key file: one line each, exit 5 on a bad one.

Also: ``check`` refuses a status server beyond loopback without a token file
(only ever checked, never bound: 0.0.0.0 and 192.0.2.10 are config text here).
The CLI runs as a real child process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_gateway_startup_errors import EXIT_MISSING_FILE, gateway, one_line

from simulators.broker import free_port
from simulators.certs import Issued, TestCa

EXIT_CONFIG = 2


def config(tmp_path: Path, *, broker: str = "", sink: str = "", status: str = "") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(f"""
[site]
id = "DC-1"

[store]
path = "data/buffer.db"

[[brokers]]
id = "site"
port = {free_port()}
{broker}

[[devices]]
id = "scan-01"
driver = "mqtt"
broker = "site"
topic = "site/DC-1/scanners/scan-01/reads"

[[sinks]]
id = "wms"
type = "http"
url = "https://127.0.0.1:{free_port()}/api/events"
{sink}

[status]
port = {free_port()}
{status}
""", encoding="utf-8")
    return path


def mtls(ca: TestCa, client: Issued, extra: str = "") -> str:
    return (f'ca_file = "{ca.cert_file}"\ncert_file = "{client.cert_file}"\n'
            f'key_file = "{client.key_file}"\n{extra}')


def test_every_file_gets_one_ok_line(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "pki")
    client = ca.issue("gateway", hosts=(), client=True, key_password=b"pw")
    (tmp_path / "pki" / "key-pw").write_text("pw\n")
    server = ca.issue("status", hosts=("127.0.0.1",))
    cfg = config(
        tmp_path,
        broker="tls = true\n" + mtls(ca, client, f'key_password_file = "{tmp_path}/pki/key-pw"'),
        sink=f'ca_file = "{ca.cert_file}"',
        status=f'cert_file = "{server.cert_file}"\nkey_file = "{server.key_file}"')
    proc = gateway("check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:-1]] == [
        "brokers[0].ca_file", "brokers[0].cert_file", "brokers[0].key_file",
        "sinks[0].ca_file", "status.cert_file", "status.key_file"]
    assert all(": ok — " in ln for ln in lines[:-1]), lines
    assert "expires" in lines[1] and "matches cert_file" in lines[2]
    assert lines[-1].startswith(f"{cfg}: ok — site DC-1")


CASES = {
    "expired": ("cert_file", "expired on"),
    "not_yet_valid": ("cert_file", "is not valid before"),
    "mismatch": ("key_file", "is not the key of cert_file"),
    "garbage": ("cert_file", "not a certificate (PEM or DER)"),
    "encrypted_no_password": ("key_file", "the key is encrypted: set key_password_file"),
    "wrong_password": ("key_file", "cannot be decrypted with key_password_file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_file_is_one_line_and_exit_5(tmp_path: Path, case: str) -> None:
    ca = TestCa(tmp_path / "pki")
    extra = ""
    if case == "expired":
        client = ca.issue("gw", hosts=(), client=True, valid_from_days=-10, valid_days=-1)
    elif case == "not_yet_valid":
        client = ca.issue("gw", hosts=(), client=True, valid_from_days=2, valid_days=10)
    elif case == "mismatch":
        a, b = ca.issue("a", hosts=(), client=True), ca.issue("b", hosts=(), client=True)
        client = Issued(a.cert_file, b.key_file)
    elif case == "garbage":
        client = ca.issue("gw", hosts=(), client=True)
        client.cert_file.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    else:
        client = ca.issue("gw", hosts=(), client=True, key_password=b"right")
        if case == "wrong_password":
            (tmp_path / "pw").write_text("wrong\n")
            extra = f'key_password_file = "{tmp_path}/pw"'
    cfg = config(tmp_path, broker="tls = true\n" + mtls(ca, client, extra))
    proc = gateway("check", "--config", str(cfg))
    assert proc.returncode == EXIT_MISSING_FILE, (proc.stdout, proc.stderr)
    key, says = CASES[case]
    line = one_line(proc.stderr)
    assert line.startswith(f"error: {cfg}: brokers[0].{key}: "), line
    assert says in line, line


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_status_beyond_loopback_needs_a_token_file(tmp_path: Path, host: str) -> None:
    cfg = config(tmp_path, status=f'host = "{host}"')
    proc = gateway("check", "--config", str(cfg))
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert f"status: host {host!r} is not a loopback address" in proc.stderr
    assert "token_file" in proc.stderr

    token = tmp_path / "status.token"
    token.write_text("t0ken\n")
    cfg = config(tmp_path, status=f'host = "{host}"\ntoken_file = "{token}"')
    proc = gateway("check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr


def test_other_loopback_addresses_need_no_token(tmp_path: Path) -> None:
    proc = gateway("check", "--config", str(config(tmp_path, status='host = "127.0.0.2"')))
    assert proc.returncode == 0, proc.stderr


def test_insecure_broker_is_a_warning_at_check(tmp_path: Path) -> None:
    cfg = config(tmp_path, broker="tls = true\ninsecure = true")
    proc = gateway("check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "warning: brokers[0] (site): TLS certificate verification is OFF" in proc.stderr


def test_opcua_password_without_encryption_is_a_warning_at_check(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "pki")
    dev = ca.issue("opcua-client", hosts=(), client=True)
    (tmp_path / "pw").write_text("pw\n")
    cfg = config(tmp_path)
    cfg.write_text(cfg.read_text() + f"""
[[devices]]
id = "sorter-1"
driver = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
security_policy = "Aes128_Sha256_RsaOaep"
security_mode = "Sign"
certificate_file = "{dev.cert_file}"
private_key_file = "{dev.key_file}"
username = "op"
password_file = "{tmp_path}/pw"
trust_folder = "opcua-pki"

[[devices.nodes]]
node = "ns=2;s=A"
point = "a"
""")
    proc = gateway("check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "devices[1].certificate_file: " in proc.stdout
    assert "devices[1].private_key_file: " in proc.stdout and "matches" in proc.stdout
    assert proc.stderr.splitlines() == [
        "warning: devices[1] (sorter-1): the password of user 'op' crosses a channel that is "
        "not encrypted (security_mode 'Sign'); use security_mode 'SignAndEncrypt'"]
