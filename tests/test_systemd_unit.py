"""The unit file: every secret the config can name is a credential, hardening scores <= 2.0.

The secret keys are derived from the config models, so a new ``*_file``
secret fails here until the unit and docs/install.md cover it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.config import _SECRET_FILES, GatewayConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "warehouse-gateway.service"
INSTALL_DOC = ROOT / "docs" / "install.md"
EXE = "/opt/warehouse-gateway/venv/bin/warehouse-gateway"
CREDENTIALS = "LoadCredential=credentials:/etc/warehouse-gateway/credentials"


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _is_secret(name: str) -> bool:
    return name in _SECRET_FILES or name.endswith("key_file")


def _label(top: str, model: type[BaseModel]) -> str:
    kind = getattr(model, "KIND", "")
    if "type" in model.model_fields:
        kind = typing.get_args(model.model_fields["type"].annotation)[0]
    return f"{top} ({kind})" if kind else top


def secret_keys() -> set[tuple[str, str]]:
    """(section, key) of every secret file key of the config models."""
    out: set[tuple[str, str]] = set()

    def walk(model: type[BaseModel], label: str) -> None:
        for name, f in model.model_fields.items():
            if name.endswith("_file") and _is_secret(name):
                out.add((label, name))
            for inner in _models(f.annotation):
                walk(inner, label)

    for top, f in GatewayConfig.model_fields.items():
        for model in _models(f.annotation):
            walk(model, _label(top, model))
    return out


def test_the_secret_keys_are_found() -> None:
    keys = secret_keys()
    # What the models hold today; the derivation must find at least these.
    assert {("sinks (http)", "token_file"), ("status", "token_file"),
            ("brokers", "password_file"), ("brokers", "key_password_file"),
            ("devices (opcua)", "password_file"), ("devices (opcua)", "private_key_file"),
            ("status", "key_file"), ("sinks (http)", "key_password_file")} <= keys


def test_every_secret_key_is_a_credential_in_the_unit_and_the_docs() -> None:
    unit = UNIT.read_text()
    assert CREDENTIALS in unit.splitlines()
    listed = {m.group(1).strip(): {k.strip() for k in m.group(2).split(",")}
              for m in re.finditer(r"^#   ([a-z]+(?: \([a-z0-9]+\))?):\s+(.+)$", unit, re.M)}
    rows = {(m.group(1), m.group(2)) for m in re.finditer(
        r"^\| `?([a-z]+(?: \([a-z0-9]+\))?)`? \| `([a-z_]+)` \|", INSTALL_DOC.read_text(), re.M)}
    for section, key in sorted(secret_keys()):
        assert key in listed.get(section, set()), f"{UNIT.name}: {section} {key} not listed"
        assert (section, key) in rows, f"docs/install.md: no row for {section} {key}"


def test_a_bare_file_name_resolves_to_the_loaded_credential(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    # LoadCredential=credentials:<folder> names the folder's wms.token "credentials_wms.token".
    (creds / "credentials_wms.token").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[site]\nid = "DC-1"\n[store]\npath = "buffer.db"\n'
                   '[[sinks]]\nid = "wms"\ntype = "http"\nurl = "http://127.0.0.1:9/e"\n'
                   'token_file = "wms.token"\n')
    sink = load_config(cfg).sinks[0]
    assert getattr(sink, "token_file", None) == creds / "credentials_wms.token"


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is missing: install Debian's systemd (scripts/setup.sh "
                    "does as root)")
    return tool


def test_hardening_scores_ok_or_better() -> None:
    out = subprocess.run([_analyze(), "security", "--offline=yes", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert m is not None, out.stdout[-2000:] + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout


def test_the_unit_verifies(tmp_path: Path) -> None:
    tool = _analyze()
    # The executables live where the package installs them: point at one that exists.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(EXE, shutil.which("true") or "/bin/true"))
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warehouse-gateway.service" not in out.stderr, out.stderr
