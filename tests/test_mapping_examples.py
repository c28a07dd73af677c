"""The mapping examples of docs/mapping.md: ``check`` accepts them and they fit the vendor devices.

The end-to-end tests (``test_gateway_e2e_mapped_*.py``) run each example's
device table against its vendor simulator; this module says so fast: the
command an integrator runs accepts every example file, and each example
names the nodes, registers and topic its simulator really serves.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mapped import EXAMPLES, example_device

from simulators.harness.process import ROOT, python_module
from simulators.vendor import plc_model
from simulators.vendor.scanner import DEFAULT_TOPIC
from simulators.vendor.sorter import EVENT_TYPE, SOURCE


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("mapping-*.toml")), ids=lambda p: p.stem)
def test_check_accepts_the_example(path: Path) -> None:
    proc = subprocess.run(python_module("gateway", "check", "--config", str(path)),
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok" in proc.stdout


def test_the_sorter_example_subscribes_to_what_the_vendor_sorter_fires() -> None:
    dev = example_device("mapping-vendor-sorter")
    assert [(e["source"], e["type"]) for e in dev["events"]] == [(SOURCE, EVENT_TYPE)]
    assert dev["endpoint"].rstrip("/").endswith(":4841")


def test_the_plc_example_reads_the_vendor_plcs_registers() -> None:
    points = {p["name"]: p for p in example_device("mapping-conveyor-plc")["points"]}
    where = {name: (p["table"], p["address"], p.get("type", "u16"), p.get("order"))
             for name, p in points.items()}
    assert where == {
        "boot": ("holding", plc_model.BOOT_ADDRESS, "u16", None),
        "items": ("holding", plc_model.COUNTER_ADDRESS, "u32", "CDAB"),
        "trk_seq": ("holding", plc_model.SEQ_ADDRESS, "u32", None),
        "trk_tote": ("holding", plc_model.TOTE_ADDRESS, "string", None),
        "trk_from": ("holding", plc_model.FROM_ADDRESS, "u16", None),
        "trk_to": ("holding", plc_model.TO_ADDRESS, "u16", None),
        "fault": ("coil", plc_model.FAULT_COIL, "bool", None),
        "motor_temp": ("input", plc_model.TEMPERATURE_ADDRESS, "i16", None),
    }
    assert points["trk_tote"]["length"] == plc_model.TOTE_CHARS
    assert points["motor_temp"]["scale"] == 0.1


def test_the_scanner_example_listens_where_the_vendor_scanner_publishes() -> None:
    assert example_device("mapping-json-scanner")["topic"] == DEFAULT_TOPIC
