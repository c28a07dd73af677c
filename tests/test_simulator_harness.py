"""The harnesses of ``simulators/harness/``: TOML rendering and child processes."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_config
from simulators.conveyor_plc import gateway_device
from simulators.harness.gateway import GatewaySetup
from simulators.harness.process import ChildProcess, ChildProcessFailed, stop_all
from simulators.harness.toml import TomlRenderError, render_toml

AWKWARD = 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f ü 😀 C:\\temp'


def test_render_toml_round_trips_awkward_values() -> None:
    doc = {
        "site": {"id": AWKWARD},
        "store": {"path": Path("/tmp/we\"ird\\dir 😀/buffer.db"), "max_bytes": "1 GiB",
                  "skipped": None},
        "numbers": {"i": -3, "f": 0.1, "big": 1e300, "inf": math.inf, "yes": True, "no": False},
        "lists": {"empty": [], "mixed": ["a", 1, 2.5, True, ["nested"]],
                  "inline": [{"a": 1}, "b"]},
        "odd keys": {"a.b": 1, "": 2, "ü": 3, "with space": {"deeper": "x"}},
        "devices": [
            {"id": "d1", "events": [{"kind": "scan"}, {"kind": "move"}],
             "fields": {"read_id": "id"}, "nodes": [{"node": "ns=2;s=X"}]},
            {"id": "d2", "zones": {"1": "INDUCT-1"}},
        ],
        "status": {},
    }
    got = tomllib.loads(render_toml(doc))
    want = dict(doc)
    want["store"] = {"path": "/tmp/we\"ird\\dir 😀/buffer.db", "max_bytes": "1 GiB"}
    want["lists"] = {"empty": [], "mixed": ["a", 1, 2.5, True, ["nested"]],
                     "inline": [{"a": 1}, "b"]}
    assert got == want


def test_render_toml_names_the_key_that_has_no_toml_form() -> None:
    with pytest.raises(TomlRenderError, match=r"devices\.port: object"):
        render_toml({"devices": [{"id": "x", "port": object()}]})
    with pytest.raises(TomlRenderError, match=r"sinks\.routes\[1\]: NoneType"):
        render_toml({"sinks": {"routes": ["scan", None]}})
    with pytest.raises(TomlRenderError, match="is not a string"):
        render_toml({"site": {1: "x"}})


def test_gateway_setup_renders_a_config_the_gateway_accepts(tmp_path: Path) -> None:
    # A path and a topic that a hand-written f-string or JSON escaping get wrong.
    workdir = tmp_path / 'site "east" \\ 😀'
    token = workdir / "token"
    workdir.mkdir()
    token.write_text("s3cret\n")
    setup = GatewaySetup(
        workdir=workdir, broker_port=1883, wms_url="http://127.0.0.1:8081/api/events",
        scanners=2, topic_prefix='site/"DC"/scanners', token_file=token,
        http_extra={"routes": ["scan", "move"]}, mqtt_sink=True, mqtt_sink_port=1884,
        device_extra={"max_payload_bytes": 1024}, status_port=9999,
        status_extra={"host": "127.0.0.1"},
        devices=[gateway_device("conveyor-01", 5020),
                 {"id": "amr-fleet", "driver": "vda5050", "broker": "site"}],
    )
    raw = tomllib.loads(setup.render())
    cfg = parse_config(raw, workdir / "gateway.toml")
    assert Path(raw["store"]["path"]) == workdir / "buffer.db"
    assert [d.id for d in cfg.devices] == ["scan-01", "scan-02", "conveyor-01", "amr-fleet"]
    assert raw["devices"][1]["topic"] == 'site/"DC"/scanners/scan-02/reads'
    assert raw["devices"][0]["max_payload_bytes"] == 1024
    assert [s.id for s in cfg.sinks] == ["wms", "mqtt-out"]
    assert raw["sinks"][0]["token_file"] == str(token)
    assert raw["sinks"][0]["routes"] == ["scan", "move"]
    assert [(b.id, b.port) for b in cfg.brokers] == [("site", 1883), ("out", 1884)]
    assert raw["sinks"][1]["broker"] == "out"
    assert (cfg.status.host, cfg.status.port) == ("127.0.0.1", 9999)


def _python(tmp_path: Path, code: str) -> ChildProcess:
    return ChildProcess("probe", [sys.executable, "-c", code], tmp_path / "probe.log")


def test_a_child_that_exits_fails_readiness_at_once_with_its_log(tmp_path: Path) -> None:
    child = _python(tmp_path, "import sys; print('bad config: no [site]', flush=True); "
                              "sys.exit(3)")
    child.start()
    with pytest.raises(ChildProcessFailed) as err:
        child.wait_until(lambda: False, 60, "readiness")
    assert "probe exited with 3 before readiness" in str(err.value)
    assert "bad config: no [site]" in str(err.value)


def test_a_child_never_ready_times_out_with_its_log(tmp_path: Path) -> None:
    child = _python(tmp_path, "import time; print('still booting', flush=True); "
                              "time.sleep(60)")
    with child:
        child.start()
        child.wait_until(lambda: "still booting" in child.log_text(), 30, "first line")
        with pytest.raises(TimeoutError) as err:
            child.wait_until(lambda: False, 0.2, "/readyz answering 200")
        assert "probe: no /readyz answering 200 after 0.2s" in str(err.value)
        assert "still booting" in str(err.value)
    assert child.returncode == -signal.SIGTERM


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ignoring SIGTERM', flush=True); time.sleep(60)")
    child = _python(tmp_path, code)
    child.start()
    child.wait_until(lambda: "ignoring" in child.log_text(), 30, "first line")
    assert child.stop(0.3) == -signal.SIGKILL
    assert not child.running
    # A second start appends to the same log; a slow stop can be made an error.
    child.start()
    child.wait_until(lambda: child.log_text().count("ignoring") == 2, 30, "second start")
    with pytest.raises(subprocess.TimeoutExpired):
        child.stop(0.3, raise_on_kill=True)
    assert child.returncode == -signal.SIGKILL and child.starts == 2


def test_stop_all_stops_children_in_parallel(tmp_path: Path) -> None:
    children = [ChildProcess(f"sleeper-{i}", [sys.executable, "-c", "import time; "
                                              "time.sleep(60)"], None) for i in range(3)]
    for child in children:
        child.start()
    stop_all(children, 20)
    assert [c.returncode for c in children] == [-signal.SIGTERM] * 3
