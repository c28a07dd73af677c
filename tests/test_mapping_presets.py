"""Presets vs the built-in recognizers: the same source input makes identical events.

For the existing roles an upgrade must not duplicate anything upstream, so a
preset must produce the *same bytes* (event ids and bodies) as the built-in
recognizer from the same source message. Each case feeds one raw input (the
OPC UA event's fields, the MQTT payload) through the built-in path (its
decoder + recognizer) and through the mapping path (the driver's generic
signal + the preset), and through the preset's text copied into a device's
own ``[devices.mapping]`` (what a user starting from the docs gets).
"""

from __future__ import annotations

import json
import random
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from drivers.mqtt.driver import decode_json_message, decode_scanner_read
from drivers.opcua.decode import divert_signal, event_signal, scan_signal
from gateway.config import ScannerFields, parse_config
from gateway.core.errors import IngestError
from gateway.core.events import Event, Signal
from gateway.core.records import IngestDeadLetter, Record
from gateway.mapping.config import load_preset, preset_text
from gateway.mapping.engine import MappingRecognizer
from gateway.recognizers.scanner import ScannerRecognizer
from gateway.recognizers.sorter import SorterRecognizer

SITE, DEV = "DC-EAST-1", "sorter-1"
T = datetime(2026, 11, 23, 10, 15, 2, 350_123)  # a UA DateTime (naive = UTC)
RX = 1_795_428_902.5


def _fields(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"EventId": b"\x01\x02", "EventType": ua.NodeId(3001, 2),
                            "SourceNode": ua.NodeId("Sorter", 2), "Time": T,
                            "Message": ua.LocalizedText("divert"), "Severity": 100}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def divert(result: Any = "diverted", *, tracking: Any = "T00000042", seq: Any = 7,
           barcode: Any = "TOTE-000123", chute: Any = "CHUTE-03", induct: Any = "INDUCT-1",
           time: Any = T) -> dict[str, Any]:
    return _fields(TrackingId=tracking, ConfirmSeq=seq, Result=result, Barcode=barcode,
                   Chute=chute, Induct=induct, Time=time)


@dataclass
class FakeScanResult:
    """What asyncua decodes an AutoID ScanResult structure into (a dataclass)."""

    CodeType: str | None
    ScanData: Any
    Timestamp: datetime | None


def scan(code: Any = "TOTE-000123", *, scan_id: Any = 17, reader: Any = "READER-1",
         code_type: str | None = "CODE128", stamp: datetime | None = T + timedelta(seconds=1),
         time: Any = T) -> dict[str, Any]:
    return _fields(ScanResult=FakeScanResult(code_type, code, stamp), ScanId=scan_id,
                   DeviceName=reader, Time=time)


DIVERTS: list[tuple[str, dict[str, Any]]] = [
    ("diverted", divert()),
    ("no-read without barcode", divert("no-read", barcode="", chute=None)),
    ("no-destination", divert("no-destination", chute=None)),
    ("chute-full", divert("chute-full")),
    ("recirculated", divert("recirculated", seq=8)),
    ("lost", divert("lost", chute=None)),
    ("no seq keys on time", divert(seq=None)),
    ("no induct uses the configured one", divert(induct=None)),
    ("empty induct uses the configured one", divert(induct="")),
    ("integer tracking id", divert(tracking=123456)),
    ("localized text result", divert(ua.LocalizedText("chute-full"))),
    ("no time: receive time", divert(seq=None, time=None)),
    ("unset 1601 time", divert(seq=None, time=datetime(1601, 1, 1))),
    # dead letters on both paths
    ("unknown result", divert("exploded")),
    ("missing tracking id", divert(tracking=None)),
    ("empty tracking id", divert(tracking="")),
    ("missing result", divert(result=None)),
    ("bool seq", divert(seq=True)),
    ("float tracking id", divert(tracking=1.5)),
]

SCANS: list[tuple[str, dict[str, Any]]] = [
    ("scan", scan()),
    ("scan without scan id", scan(scan_id=None)),
    ("text scan id", scan(scan_id="A-17")),
    ("empty code is a no-read", scan("", code_type=None)),
    ("NOREAD", scan("NOREAD", reader=None)),
    ("no code at all is a no-read", scan(None)),
    ("bytes code", scan(b"TOTE-7")),
    ("no reader name: the device", scan(reader="")),
    ("no scan timestamp: the event time", scan(stamp=None)),
    ("unset scan timestamp", scan(stamp=datetime(1601, 1, 1))),
    ("no time at all", scan(stamp=None, time=None)),
    ("no ScanResult", _fields(ScanId=3)),
]


def _built_in_sorter(fields: dict[str, Any], kind: str, rec: SorterRecognizer) -> list[Record]:
    try:
        sig = (divert_signal if kind == "divert_confirm" else scan_signal)(DEV, fields, RX)
    except IngestError as err:
        return [IngestDeadLetter(DEV, err.kind, b"")]
    return list(rec.feed(sig))


def _same(built_in: list[Record], mapped: list[Record]) -> None:
    assert [type(r) for r in mapped] == [type(r) for r in built_in]
    for a, b in zip(built_in, mapped, strict=True):
        if isinstance(a, Event):
            assert isinstance(b, Event)
            assert (b.event_id, b.type, b.priority, b.body) == (a.event_id, a.type, a.priority,
                                                                a.body)


def _sorter_mappings() -> list[MappingRecognizer]:
    own = load_preset("sorter").model_validate(tomllib.loads(preset_text("sorter")))
    params = {"induct": "INDUCT-CFG", "location": "INDUCT-1"}
    return [MappingRecognizer(SITE, DEV, load_preset("sorter"), params=params, preset="sorter"),
            MappingRecognizer(SITE, DEV, own, params=params)]


@pytest.mark.parametrize(("name", "fields"), DIVERTS, ids=[c[0] for c in DIVERTS])
def test_sorter_preset_diverts_match_the_built_in_recognizer(name: str,
                                                             fields: dict[str, Any]) -> None:
    rec = SorterRecognizer(site=SITE, device=DEV, induct="INDUCT-CFG", location="INDUCT-1")
    built_in = _built_in_sorter(fields, "divert_confirm", rec)
    for mapped in _sorter_mappings():
        sig = event_signal(DEV, "divert_confirm", fields, RX, {})
        _same(built_in, mapped.feed(sig))


@pytest.mark.parametrize(("name", "fields"), SCANS, ids=[c[0] for c in SCANS])
def test_sorter_and_autoid_presets_scans_match_the_built_in(name: str,
                                                            fields: dict[str, Any]) -> None:
    rec = SorterRecognizer(site=SITE, device=DEV, location="INDUCT-1")
    built_in = _built_in_sorter(fields, "scan", rec)
    autoid = MappingRecognizer(SITE, DEV, load_preset("autoid-scan"),
                               params={"location": "INDUCT-1"})
    for mapped in [*_sorter_mappings(), autoid]:
        _same(built_in, mapped.feed(event_signal(DEV, "scan", fields, RX, {})))


@pytest.mark.parametrize("value", ["Execute", 1234, 12.5, None, True, [1, 2]])
@pytest.mark.parametrize("kind", ["status", "telemetry"])
def test_sorter_preset_data_changes_match_the_built_in(value: Any, kind: str) -> None:
    stamp_us = 1_795_000_000_250_123
    sig = Signal(DEV, "state", value, RX, stamp_us / 1e6, str(stamp_us),
                 "bad" if value is None else "good",
                 attrs={"node": "ns=2;s=Sorter.State", "kind": kind})
    built_in = SorterRecognizer(site=SITE, device=DEV).feed(sig)
    for mapped in _sorter_mappings():
        _same(list(built_in), mapped.feed(sig))


def test_sorter_preset_random_diverts_match() -> None:
    rng = random.Random(9)
    rec = SorterRecognizer(site=SITE, device=DEV, induct="INDUCT-CFG")
    mappings = _sorter_mappings()
    results = ["diverted", "no-read", "no-destination", "chute-full", "recirculated", "lost"]
    for n in range(500):
        fields = divert(
            rng.choice(results), tracking=rng.choice([f"T{n:08d}", n, ""]),
            seq=rng.choice([n, None]), barcode=rng.choice([f"TOTE-{n}", "", None]),
            chute=rng.choice([f"CHUTE-{n % 9}", None, ""]),
            induct=rng.choice(["INDUCT-1", None, ""]),
            time=T + timedelta(microseconds=rng.randrange(10**9)))
        built_in = _built_in_sorter(fields, "divert_confirm", rec)
        for mapped in mappings:
            _same(built_in, mapped.feed(event_signal(DEV, "divert_confirm", fields, RX, {})))


# -- scanners (MQTT JSON) ------------------------------------------------------------------

SCANNER = "scan-1"


def _scanner_pair(debounce: float = 0.5) -> tuple[ScannerRecognizer, list[MappingRecognizer]]:
    params = {"debounce": debounce, "no_read_codes": ["NOREAD", ""], "location": "INDUCT-1"}
    own = load_preset("scanner-json").model_validate(tomllib.loads(preset_text("scanner-json")))
    return (ScannerRecognizer(site=SITE, device=SCANNER, debounce_s=debounce,
                              no_read_codes=frozenset(["NOREAD", ""]), location="INDUCT-1"),
            [MappingRecognizer(SITE, SCANNER, load_preset("scanner-json"), params=params),
             MappingRecognizer(SITE, SCANNER, own, params=params)])


def _scanner_built_in(rec: ScannerRecognizer, payload: bytes, rx: float) -> list[Record]:
    try:
        sig = decode_scanner_read(payload, ScannerFields(), SCANNER, rx, 65536)
    except IngestError as err:
        return [IngestDeadLetter(SCANNER, err.kind, b"")]
    return list(rec.feed(sig))


def _scanner_mapped(rec: MappingRecognizer, payload: bytes, rx: float) -> list[Record]:
    try:
        sig = decode_json_message(payload, SCANNER, "scan/1", rx, 65536)
    except IngestError as err:
        return [IngestDeadLetter(SCANNER, err.kind, b"")]
    return rec.feed(sig)


def _msg(**doc: Any) -> bytes:
    return json.dumps(doc).encode()


PAYLOADS: list[tuple[str, list[bytes]]] = [
    ("read", [_msg(code="A", read_id="r1", timestamp="2026-11-23T10:15:02.350Z",
                   symbology="CODE128")]),
    ("integer read id and code", [_msg(code=4711, read_id=17, timestamp=1795428902350)]),
    ("no timestamp", [_msg(code="A", read_id="r1")]),
    ("no read id: digest", [_msg(code="A", timestamp="2026-11-23T10:15:02Z")]),
    ("no-read", [_msg(code="NOREAD", read_id="r9")]),
    ("empty code", [_msg(code="", read_id="r9", timestamp=1795428902.1)]),
    ("symbology not text", [_msg(code="A", read_id="r1", symbology=5)]),
    ("double read", [_msg(code="A", read_id="r1", timestamp=1795428902.0),
                     _msg(code="A", read_id="r2", timestamp=1795428902.1),
                     _msg(code="A", read_id="r3", timestamp=1795428902.7)]),
    ("redelivery is no double read", [_msg(code="A", read_id="r1", timestamp=1795428902.0),
                                      _msg(code="A", read_id="r1", timestamp=1795428902.0)]),
    ("no-read keeps the window", [_msg(code="A", read_id="r1", timestamp=1795428902.0),
                                  _msg(code="NOREAD", read_id="r2", timestamp=1795428902.05),
                                  _msg(code="A", read_id="r3", timestamp=1795428902.1)]),
    ("missing code", [_msg(read_id="r1")]),
    ("code is a boolean", [_msg(code=True, read_id="r1")]),
    ("code is an object", [_msg(code={"a": 1}, read_id="r1")]),
    ("bad timestamp", [_msg(code="A", read_id="r1", timestamp="yesterday")]),
    ("not json", [b"{nope"]),
]


@pytest.mark.parametrize(("name", "payloads"), PAYLOADS, ids=[c[0] for c in PAYLOADS])
@pytest.mark.parametrize("debounce", [0.5, 0.0])
def test_scanner_json_preset_matches_the_built_in(name: str, payloads: list[bytes],
                                                  debounce: float) -> None:
    built_in, mappings = _scanner_pair(debounce)
    for i, payload in enumerate(payloads):
        expected = _scanner_built_in(built_in, payload, RX + i * 0.05)
        for mapped in mappings:
            _same(expected, _scanner_mapped(mapped, payload, RX + i * 0.05))
    for mapped in mappings:
        assert mapped.health.debounced == built_in.debounced


def test_scanner_json_preset_random_reads_match() -> None:
    rng = random.Random(5)
    built_in, mappings = _scanner_pair()
    for n in range(1000):
        doc: dict[str, Any] = {"code": rng.choice(["A", "B", "C", "NOREAD", "", 7])}
        if rng.random() < 0.8:
            doc["read_id"] = rng.choice([f"r{n}", n, f"r{n - 1}"])
        if rng.random() < 0.8:
            doc["timestamp"] = 1795428902.0 + n * rng.choice([0.05, 0.3, 1.0])
        if rng.random() < 0.5:
            doc["symbology"] = rng.choice(["CODE128", "QR", None])
        payload = json.dumps(doc).encode()
        expected = _scanner_built_in(built_in, payload, RX + n)
        for mapped in mappings:
            _same(expected, _scanner_mapped(mapped, payload, RX + n))


def test_a_preset_copied_into_a_config_is_the_same_mapping(tmp_path: Path) -> None:
    """The docs say: copy a preset to start your own. The copy loads and validates."""
    doc = tomllib.loads(preset_text("sorter"))
    raw = {"site": {"id": SITE}, "store": {"path": "b.db"},
           "devices": [{"id": DEV, "driver": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
                        "events": [{"kind": "divert_confirm", "source": "ns=2;s=Sorter",
                                    "type": "ns=2;i=3001"}],
                        "mapping": doc},
                       {"id": "s2", "driver": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
                        "events": [{"kind": "divert_confirm", "source": "ns=2;s=Sorter",
                                    "type": "ns=2;i=3001"}],
                        "preset": "sorter"}]}
    cfg = parse_config(raw, tmp_path / "site.toml")
    assert cfg.devices[0].generic_signals and cfg.devices[1].generic_signals
