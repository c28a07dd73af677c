"""Start-up failures: one line on stderr naming the problem, and a distinct exit code.

``warehouse-gateway run`` (and ``check`` for files) runs as a real child
process; nothing but that one line may reach stderr (logs go to stdout).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.broker import free_port
from simulators.certs import TestCa

ROOT = Path(__file__).resolve().parents[1]

EXIT_STATUS_PORT = 4
EXIT_MISSING_FILE = 5
EXIT_STORE_DIR = 6


def write_config(tmp_path: Path, *, store: str = "data/buffer.db", status_port: int | None = None,
                 broker_extra: str = "", device_extra: str = "") -> Path:
    """A small valid site config; nothing listens at its broker or WMS."""
    port = status_port if status_port is not None else free_port()
    path = tmp_path / "site.toml"
    path.write_text(f"""
[site]
id = "DC-1"

[store]
path = "{store}"

[[brokers]]
id = "site"
port = {free_port()}
{broker_extra}

[[devices]]
id = "scan-01"
driver = "mqtt"
broker = "site"
topic = "site/DC-1/scanners/scan-01/reads"

{device_extra}

[[sinks]]
id = "wms"
type = "http"
url = "http://127.0.0.1:{free_port()}/api/events"

[status]
port = {port}
""", encoding="utf-8")
    return path


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway <args>`` from the project root; it must exit by itself."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def one_line(stderr: str) -> str:
    """The single line on stderr (fails when there are more, e.g. a traceback)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port another process already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_status_port_in_use_is_one_line_and_exit_4(tmp_path: Path, listening: int) -> None:
    cfg = write_config(tmp_path, status_port=listening)
    proc = gateway("run", "--config", str(cfg))
    assert proc.returncode == EXIT_STATUS_PORT, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith("error: status port 127.0.0.1:")
    assert f":{listening} cannot be bound" in line
    assert "status.port" in line
    # It failed before starting any task (and said so in the log, without a traceback).
    assert "gateway_starting" not in proc.stdout
    assert "gateway_start_failed" in proc.stdout


MISSING_FILES = {
    "broker_ca_file": ('tls = true\nca_file = "pki/ca.pem"', "", "brokers[0].ca_file"),
    "opcua_certificate": ("", """
[[devices]]
id = "sorter-01"
driver = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
certificate_file = "pki/cert.der"
private_key_file = "pki/key.pem"

[[devices.nodes]]
node = "ns=2;s=Sorter.Speed"
point = "speed"
""", "devices[1].certificate_file"),
}


@pytest.mark.parametrize(("broker_extra", "device_extra", "key"), list(MISSING_FILES.values()),
                         ids=list(MISSING_FILES))
@pytest.mark.parametrize("command", ["run", "check"])
def test_missing_certificate_file_is_one_line_and_exit_5(
    tmp_path: Path, command: str, broker_extra: str, device_extra: str, key: str
) -> None:
    cfg = write_config(tmp_path, broker_extra=broker_extra, device_extra=device_extra)
    proc = gateway(command, "--config", str(cfg))
    assert proc.returncode == EXIT_MISSING_FILE, (proc.stdout, proc.stderr)
    line = one_line(proc.stderr)
    assert line.startswith(f"error: {cfg}: {key}: file ")
    assert str(tmp_path / "pki") in line and line.endswith("does not exist")
    assert proc.stdout == ""  # nothing started, not even logging


def test_check_passes_once_the_file_is_there(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, broker_extra=MISSING_FILES["broker_ca_file"][0])
    ca = TestCa(tmp_path / "pki")
    ca.cert_file.rename(tmp_path / "pki" / "ca.pem")
    proc = gateway("check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("brokers[0].ca_file: ")


STORE_CASES = {
    # A file stands where the store's folder should be.
    "folder_is_a_file": ("blocker/buffer.db", "store directory", "cannot be created"),
    # store.path names a folder instead of the database file.
    "path_is_a_directory": ("data", "store.path", "is a directory"),
}


@pytest.mark.parametrize(("store", "names", "says"), list(STORE_CASES.values()),
                         ids=list(STORE_CASES))
def test_unusable_store_location_is_one_line_and_exit_6(
    tmp_path: Path, store: str, names: str, says: str
) -> None:
    (tmp_path / "blocker").write_text("not a folder")
    (tmp_path / "data").mkdir()
    cfg = write_config(tmp_path, store=store)
    proc = gateway("run", "--config", str(cfg))
    assert proc.returncode == EXIT_STORE_DIR, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith(f"error: {names} ")
    assert says in line
    assert str(tmp_path / store.split("/")[0]) in line
    assert "gateway_starting" not in proc.stdout
