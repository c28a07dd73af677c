"""Configuration: a complete site file loads, and every mistake is named precisely.

Each error case runs ``warehouse-gateway check`` on a file and asserts the exit
code and that one stderr line names the file, the key path and what was
expected.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import (
    ConfigError,
    HttpSinkConfig,
    MqttSinkConfig,
    ScannerFields,
    load_config,
    parse_bytes,
    parse_duration,
)

VALID = """
[site]
id = "DC-EAST-1"

[store]
path = "data/buffer.db"
max_bytes = "64 MiB"
retention = "1h"

[[brokers]]
id = "site"
host = "127.0.0.1"
port = 1883

[[devices]]
id = "scan-1"
driver = "mqtt"
broker = "site"
topic = "scanners/induct-1/read"
location = "INDUCT-1"
debounce = "250ms"
fields = { code = "scan.barcode", read_id = "scan.id", timestamp = "ts", symbology = "scan.sym" }

[[devices]]
id = "scan-2"
driver = "mqtt"
broker = "site"
topic = "scanners/+/read2"
fields = { code = "data", read_id = "seq" }

[[sinks]]
id = "wms"
type = "http"
url = "https://wms.example.internal/api/events"
token_file = "secrets/wms.token"
routes = ["scan", "pick", "pack", "move", "exception"]
timeout = "5s"

[[sinks]]
id = "mqtt-out"
type = "mqtt"
broker = "site"
prefix = "wh"

[status]
host = "127.0.0.1"
port = 8081
"""


@pytest.fixture(autouse=True)
def _no_credentials_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # A systemd credentials folder in the environment would change how secrets resolve.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


@pytest.fixture
def conf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder holding the token file; the working directory is elsewhere."""
    folder = tmp_path / "etc" / "gateway"
    (folder / "secrets").mkdir(parents=True)
    (folder / "secrets" / "wms.token").write_text("s3cret-token\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder


def _toml(value: Any) -> str:
    """Encode the subset of TOML these tests need, tables inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_config(folder: Path, doc: dict[str, Any], name: str = "site.toml") -> Path:
    path = folder / name
    path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in doc.items()))
    return path


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_names(err: str, path: Path, *parts: str) -> None:
    lines = [line for line in err.splitlines() if str(path) in line]
    assert any(all(p in line for p in parts) for line in lines), (
        f"no stderr line names {path} and {parts}:\n{err}"
    )


# -- a complete valid file --------------------------------------------------------------


def test_valid_config_loads_with_paths_relative_to_its_folder(conf_dir: Path) -> None:
    path = conf_dir / "site.toml"
    path.write_text(VALID)

    cfg = load_config(path)

    assert cfg.site.id == "DC-EAST-1"
    assert cfg.store.path == conf_dir.resolve() / "data" / "buffer.db"
    assert cfg.store.max_bytes == 64 * 1024**2
    assert cfg.store.retention == 3600.0
    assert [b.id for b in cfg.brokers] == ["site"]
    assert [d.id for d in cfg.devices] == ["scan-1", "scan-2"]
    assert cfg.devices[0].fields == ScannerFields(
        code="scan.barcode", read_id="scan.id", timestamp="ts", symbology="scan.sym"
    )
    assert cfg.devices[0].debounce == 0.25
    assert cfg.devices[0].location == "INDUCT-1"
    # Keys left out of a custom mapping keep their defaults.
    assert cfg.devices[1].fields == ScannerFields(code="data", read_id="seq")
    assert cfg.devices[1].fields.timestamp == "timestamp"
    http, mqtt = cfg.sinks
    assert isinstance(http, HttpSinkConfig)
    assert http.token_file == conf_dir.resolve() / "secrets" / "wms.token"
    assert http.timeout == 5.0
    assert http.routes == ["scan", "pick", "pack", "move", "exception"]
    assert isinstance(mqtt, MqttSinkConfig)
    assert mqtt.broker == "site"
    assert cfg.status.port == 8081


def test_absolute_paths_are_kept(conf_dir: Path, tmp_path: Path) -> None:
    doc = tomllib.loads(VALID)
    token = tmp_path / "abs.token"
    token.write_text("t")
    doc["store"]["path"] = str(tmp_path / "abs.db")
    doc["sinks"][0]["token_file"] = str(token)
    cfg = load_config(write_config(conf_dir, doc))
    assert cfg.store.path == tmp_path / "abs.db"
    sink = cfg.sinks[0]
    assert isinstance(sink, HttpSinkConfig)
    assert sink.token_file == token


def test_systemd_credentials_folder_wins_for_relative_secrets(
    conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "wms.token").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    doc = tomllib.loads(VALID)
    doc["sinks"][0]["token_file"] = "wms.token"
    sink = load_config(write_config(conf_dir, doc)).sinks[0]
    assert isinstance(sink, HttpSinkConfig)
    assert sink.token_file == creds / "wms.token"


def test_check_accepts_a_valid_file(conf_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf_dir / "site.toml"
    path.write_text(VALID)
    code, out, err = run_check(path, capsys)
    assert code == 0, err
    assert f"{path}: ok" in out
    assert "site DC-EAST-1" in out
    assert "1 broker(s), 2 device(s), 2 sink(s)" in out
    assert err == ""


# -- one mistake at a time ------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], Path], None]


def _set(*keys: str | int, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any], _folder: Path) -> None:
        target: Any = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _delete(*keys: str | int) -> Mutation:
    def mutate(doc: dict[str, Any], _folder: Path) -> None:
        target: Any = doc
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


def _duplicate_id(section: str) -> Mutation:
    def mutate(doc: dict[str, Any], _folder: Path) -> None:
        doc[section][1]["id"] = doc[section][0]["id"]

    return mutate


def _token_file_is_a_folder(doc: dict[str, Any], folder: Path) -> None:
    (folder / "secrets" / "a-folder").mkdir()
    doc["sinks"][0]["token_file"] = "secrets/a-folder"


def _token_file_empty(doc: dict[str, Any], folder: Path) -> None:
    (folder / "secrets" / "empty.token").write_text("  \n")
    doc["sinks"][0]["token_file"] = "secrets/empty.token"


def _password_without_username(doc: dict[str, Any], folder: Path) -> None:
    (folder / "secrets" / "broker.pw").write_text("pw\n")
    doc["brokers"][0]["password_file"] = "secrets/broker.pw"


# (mutation, parts one stderr line must hold; "{dir}" is the config folder)
ERROR_CASES: dict[str, tuple[Mutation, tuple[str, ...]]] = {
    "unknown-key": (
        _set("store", "bogus", value=1),
        ("store.bogus", "unknown key"),
    ),
    "wrong-type": (
        _set("brokers", 0, "port", value="abc"),
        ("brokers[0].port", "valid integer", "'abc'"),
    ),
    "port-out-of-range": (
        _set("brokers", 0, "port", value=70000),
        ("brokers[0].port", "less than or equal to 65535"),
    ),
    "bad-size": (
        _set("store", "max_bytes", value="lots"),
        ("store.max_bytes", "expected a size such as 2 GiB", "'lots'"),
    ),
    "bad-duration": (
        _set("store", "retention", value="soon"),
        ("store.retention", "expected a duration such as 5s", "'soon'"),
    ),
    "bad-device-duration": (
        _set("devices", 1, "debounce", value="quick"),
        ("devices[1].debounce", "expected a duration", "'quick'"),
    ),
    "missing-site-id": (
        _delete("site", "id"),
        ("site.id", "required key is missing"),
    ),
    "missing-store": (
        _delete("store"),
        ("store", "required key is missing"),
    ),
    "bad-site-id": (
        _set("site", "id", value="DC EAST/1"),
        ("site.id", "should match pattern"),
    ),
    "device-undefined-broker": (
        _set("devices", 0, "broker", value="nowhere"),
        ("devices[0].broker", "no broker with id 'nowhere'", "defined: ['site']"),
    ),
    "sink-undefined-broker": (
        _set("sinks", 1, "broker", value="nowhere"),
        ("sinks[1].broker", "no broker with id 'nowhere'"),
    ),
    "duplicate-device-ids": (
        _duplicate_id("devices"),
        ("devices[1].id", "duplicate id 'scan-1'", "also devices[0]"),
    ),
    "duplicate-sink-ids": (
        _duplicate_id("sinks"),
        ("sinks[1].id", "duplicate id 'wms'", "also sinks[0]"),
    ),
    "unknown-route": (
        _set("sinks", 0, "routes", value=["scan", "teleport"]),
        ("sinks[0].routes", "unknown event type(s) ['teleport']", "expected some of", "'pick'"),
    ),
    "inline-token": (
        _set("sinks", 0, "token", value="s3cret-inline"),
        ("sinks[0]", "'token' may not be written in the config file", "'token_file'"),
    ),
    "inline-broker-password": (
        _set("brokers", 0, "password", value="hunter2"),
        ("brokers[0]", "'password' may not be written", "'password_file'"),
    ),
    "missing-token-file": (
        _set("sinks", 0, "token_file", value="secrets/missing.token"),
        ("sinks[0].token_file", "cannot read token file", "{dir}/secrets/missing.token"),
    ),
    "unreadable-token-file": (
        _token_file_is_a_folder,
        ("sinks[0].token_file", "cannot read token file", "{dir}/secrets/a-folder"),
    ),
    "empty-token-file": (
        _token_file_empty,
        ("sinks[0].token_file", "{dir}/secrets/empty.token", "is empty"),
    ),
    "unknown-sink-type": (
        _set("sinks", 0, "type", value="ftp"),
        ("sinks[0].type", "unknown type 'ftp'", "expected one of 'http', 'mqtt'"),
    ),
    "unknown-device-driver": (
        _set("devices", 0, "driver", value="profinet"),
        ("devices[0].driver", "unknown driver 'profinet'",
         "expected one of 'mqtt', 'modbus', 'opcua', 'vda5050'"),
    ),
    "key-of-another-driver": (
        _set("devices", 0, "endpoint", value="opc.tcp://127.0.0.1:4840"),
        ("devices[0].endpoint", "unknown key"),
    ),
    "bad-sink-url": (
        _set("sinks", 0, "url", value="wms.example.internal"),
        ("sinks[0].url", "should match pattern"),
    ),
    "bad-topic-filter": (
        _set("devices", 0, "topic", value="a/#/b"),
        ("devices[0].topic", "not a valid MQTT topic filter", "'a/#/b'"),
    ),
    "bad-topic-wildcard": (
        _set("devices", 0, "topic", value="a/b+"),
        ("devices[0].topic", "not a valid MQTT topic filter", "'a/b+'"),
    ),
    "unknown-field-mapping-key": (
        _set("devices", 0, "fields", "barcode", value="x"),
        ("devices[0].fields.barcode", "unknown key"),
    ),
    "zero-backoff": (
        _set("sinks", 0, "backoff_initial", value=0),
        ("sinks[0].backoff_initial", "greater than 0"),
    ),
    "zero-timeout": (
        _set("sinks", 0, "timeout", value="0s"),
        ("sinks[0].timeout", "greater than 0"),
    ),
    "reserved-header": (
        _set("sinks", 0, "headers", value={"Authorization": "Bearer x", "X-Site": "east"}),
        ("sinks[0].headers", "'Authorization'", "may not be overridden"),
    ),
    "password-without-username": (
        _password_without_username,
        ("brokers[0]", "password_file is set but username is not"),
    ),
}


@pytest.mark.parametrize(("mutate", "parts"), list(ERROR_CASES.values()), ids=list(ERROR_CASES))
def test_check_names_file_key_and_expectation(
    conf_dir: Path, capsys: pytest.CaptureFixture[str], mutate: Mutation, parts: tuple[str, ...]
) -> None:
    doc = copy.deepcopy(tomllib.loads(VALID))
    mutate(doc, conf_dir)
    path = write_config(conf_dir, doc)

    code, out, err = run_check(path, capsys)

    assert code == 2
    assert out == ""
    assert "configuration invalid" in err
    expected = [p.replace("{dir}", str(conf_dir.resolve())) for p in parts]
    assert_one_line_names(err, path, *expected)
    # Every problem line sits under its key path, never under a vague "(top level)".
    assert "(top level)" not in err


def test_inline_secret_is_not_echoed(conf_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tomllib.loads(VALID)
    doc["sinks"][0]["token"] = "s3cret-inline"
    code, _, err = run_check(write_config(conf_dir, doc), capsys)
    assert code == 2
    assert "s3cret-inline" not in err


def test_all_problems_are_reported_at_once(conf_dir: Path) -> None:
    doc = tomllib.loads(VALID)
    doc["store"]["max_bytes"] = "lots"
    doc["store"]["bogus"] = True
    doc["brokers"][0]["port"] = "abc"
    with pytest.raises(ConfigError) as info:
        load_config(write_config(conf_dir, doc))
    assert info.value.path == str(conf_dir / "site.toml")
    assert len(info.value.problems) == 3
    assert {p.split(":")[0] for p in info.value.problems} == {
        "store.max_bytes",
        "store.bogus",
        "brokers[0].port",
    }


def test_several_reference_problems_each_get_a_line(conf_dir: Path) -> None:
    doc = tomllib.loads(VALID)
    doc["devices"][0]["broker"] = "nowhere"
    doc["sinks"][1]["id"] = "wms"
    with pytest.raises(ConfigError) as info:
        load_config(write_config(conf_dir, doc))
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "devices[0].broker",
        "sinks[1].id",
    ]


def test_check_reports_toml_syntax_error(
    conf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = conf_dir / "broken.toml"
    path.write_text('[site]\nid = "DC-1"\n[store\npath = "x.db"\n')
    code, _, err = run_check(path, capsys)
    assert code == 2
    assert_one_line_names(err, path, "TOML syntax error", "line 3")


def test_check_reports_missing_file(conf_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf_dir / "nope.toml"
    code, _, err = run_check(path, capsys)
    assert code == 2
    assert_one_line_names(err, path, "file not found")


# -- sizes and durations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64 MiB", 64 * 1024**2),
        ("2 GiB", 2 * 1024**3),
        ("2gib", 2 * 1024**3),
        ("500 MB", 500_000_000),
        ("1.5 KiB", 1536),
        ("3 kb", 3000),
        (" 7 B ", 7),
        ("1 TiB", 1024**4),
        ("1048576", 1048576),
        (1048576, 1048576),
    ],
    ids=repr,
)
def test_parse_bytes(text: object, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text",
    ["lots", "", "0", 0, -5, "-1 MiB", "10 XB", "MiB", "0.1 B", True, 1.5, None],
    ids=repr,
)
def test_parse_bytes_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("5 s", 5.0),
        ("2m", 120.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        ("1H", 3600.0),
        ("1d", 86400.0),
        ("10", 10.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
    ids=repr,
)
def test_parse_duration(text: object, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["soon", "", "-1s", -1, "5 min", "1w", "s", True, None],
    ids=repr,
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_check_lists_field_and_cross_reference_problems_in_one_run(
    conf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tomllib.loads(VALID)
    # Field errors, each in its own section ...
    doc["store"]["max_byte"] = "1 GiB"
    doc["status"]["port"] = "abc"
    doc["sinks"][0]["routes"] = ["scan", "pik"]
    # ... and cross-reference errors that need the rest of the config to see.
    doc["devices"][0]["broker"] = "nowhere"
    doc["devices"][1]["id"] = "scan-1"
    doc["sinks"][1]["broker"] = "elsewhere"
    doc["devices"].append({
        "id": "pack-scan", "driver": "mqtt", "broker": "site", "topic": "vendor/pack/reads",
        "mapping": {"ids": ["meta.seq"], "events": [
            {"on": "message", "type": "scan", "key": "read:{meta.other}",
             "data": {"code": {"field": "barcode"}}}]}})
    path = write_config(conf_dir, doc)

    code, out, err = run_check(path, capsys)

    assert code == 2 and out == ""
    lines = [ln for ln in err.splitlines() if str(path) in ln]
    keys = [ln.split(": ")[1] for ln in lines]
    for key in ("store.max_byte", "status.port", "sinks[0].routes", "devices[0].broker",
                "devices[1].id", "sinks[1].broker", "devices[2].mapping.events[0].key"):
        assert key in keys, (key, err)
    assert any("store.max_byte" in ln and "did you mean 'max_bytes'" in ln for ln in lines)
    assert any("devices[1].id: duplicate id 'scan-1' (also devices[0])" in ln for ln in lines)
    assert len(lines) == len(set(lines)) == 7, err
