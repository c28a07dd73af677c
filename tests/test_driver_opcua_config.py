"""OPC UA device configuration: the documented example loads, mistakes are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, OpcuaDevice, load_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "sorter-opcua.md"


def _example(tmp_path: Path) -> Path:
    """The complete example config of the docs page, with its files created."""
    text = DOCS.read_text(encoding="utf-8")
    toml = re.search(r"```toml\n(.*?)```", text, re.S)
    assert toml is not None, "docs/sorter-opcua.md has no toml example"
    for name in ("pki/gateway_cert.der", "pki/gateway_key.pem", "pki/sorter_cert.der"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "opcua-sorter.password").write_text("s3cret\n")
    path = tmp_path / "gateway.toml"
    path.write_text(toml.group(1), encoding="utf-8")
    return path


def test_documented_example_loads_and_resolves_files(tmp_path: Path) -> None:
    cfg = load_config(_example(tmp_path))
    devices = [d for d in cfg.devices if isinstance(d, OpcuaDevice)]
    assert [d.id for d in devices] == ["sorter-1", "sorter-2"]
    plain, secure = devices
    assert plain.security_policy == "None" and plain.events and plain.nodes
    assert secure.security_mode == "SignAndEncrypt"
    assert secure.certificate_file == tmp_path / "pki" / "gateway_cert.der"
    assert secure.password_file == tmp_path / "secrets" / "opcua-sorter.password"


def _device(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(f"""
[site]
id = "DC-EAST-1"
[store]
path = "buffer.db"
[[devices]]
id = "sorter-1"
driver = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
{body}
""", encoding="utf-8")
    return path


@pytest.mark.parametrize(("body", "message"), [
    ('[[devices.nodes]]\nnode = "Sorter.State"\npoint = "state"',
     "devices[0].nodes[0].node: Value error, not an OPC UA node id: 'Sorter.State'"),
    ('security_policy = "Basic256Sha256"\nsecurity_mode = "Sign"\n'
     '[[devices.nodes]]\nnode = "ns=2;s=A"\npoint = "a"',
     "security_policy 'Basic256Sha256' needs certificate_file and private_key_file"),
    ('security_mode = "SignAndEncrypt"\n[[devices.nodes]]\nnode = "ns=2;s=A"\npoint = "a"',
     "security_mode 'SignAndEncrypt' needs security_policy 'Basic256Sha256'"),
    ('username = "op"\npassword = "x"\n[[devices.nodes]]\nnode = "ns=2;s=A"\npoint = "a"',
     "'password' may not be written in the config file"),
    ('password_file = "pw"\n[[devices.nodes]]\nnode = "ns=2;s=A"\npoint = "a"',
     "password_file is set but username is not"),
    ("", "nothing to read"),
    ('[[devices.events]]\nkind = "divert"\nsource = "ns=2;s=Sorter"\ntype = "i=2041"',
     "devices[0].events[0].kind: Input should be 'divert_confirm', 'scan' or 'event'"),
    ('[[devices.nodes]]\nnode = "i=1"\npoint = "a"\n[[devices.nodes]]\nnode = "i=2"\n'
     'point = "a"', "point names used more than once: ['a']"),
])
def test_mistakes_are_named(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "pw").write_text("secret")
    with pytest.raises(ConfigError) as err:
        load_config(_device(tmp_path, body))
    assert message.removeprefix("devices[0].nodes[0].node: Value error, ") in str(err.value)
    assert "devices[0]" in str(err.value)
