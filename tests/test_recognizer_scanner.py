"""Scanner reads: the pure recognizer (table-driven) and the MQTT payload decoder."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.mqtt.driver import IngestError, decode_scanner_read
from gateway.config import ScannerFields
from gateway.core.events import Event, Priority, Signal, format_time, make_event_id
from gateway.recognizers.scanner import MAX_RECENT_CODES, ScannerRecognizer

SITE, DEVICE, LOCATION = "DC-EAST-1", "scan-1", "INDUCT-1"
T0 = 1_795_428_902.0  # 2026-11-23T10:15:02Z


def read(
    code: str,
    read_id: str | None = "r1",
    t: float | None = 0.0,
    *,
    recv: float | None = None,
    digest: str | None = None,
    symbology: str | None = "CODE128",
) -> Signal:
    """A scanner ``read`` signal; ``t`` and ``recv`` are seconds after T0."""
    attrs: dict[str, Any] = {"symbology": symbology}
    if digest is not None:
        attrs["digest"] = digest
    source_time = None if t is None else T0 + t
    receive = T0 + (recv if recv is not None else (t or 0.0) + 0.011)
    return Signal(
        device=DEVICE,
        point="read",
        value=code,
        receive_time=receive,
        source_time=source_time,
        source_seq=read_id,
        attrs=attrs,
    )


def recognizer(debounce: float = 0.5) -> ScannerRecognizer:
    return ScannerRecognizer(site=SITE, device=DEVICE, debounce_s=debounce, location=LOCATION)


def summary(events: list[Event]) -> list[str]:
    out = []
    for ev in events:
        data = ev.to_dict()["data"]
        out.append(f"scan {data['code']}" if ev.type == "scan" else f"{ev.type} {data['reason']}")
    return out


@dataclass(frozen=True)
class Case:
    signals: list[Signal]
    expected: list[list[str]]  # per signal fed, the events it produced
    debounced: int
    debounce: float = 0.5


CASES: dict[str, Case] = {
    "normal-read": Case([read("A", "r1", 0.0)], [["scan A"]], 0),
    "redelivery-same-read-id": Case(
        [read("A", "r1", 0.0), read("A", "r1", 0.0, recv=5.0)], [["scan A"], ["scan A"]], 0
    ),
    "double-read-within-window": Case(
        [read("A", "r1", 0.0), read("A", "r2", 0.1)], [["scan A"], []], 1
    ),
    "double-reads-counted": Case(
        [read("A", "r1", 0.0), read("A", "r2", 0.1), read("A", "r3", 0.2)],
        [["scan A"], [], []],
        2,
    ),
    "window-measured-from-last-emitted": Case(
        [read("A", "r1", 0.0), read("A", "r2", 0.3), read("A", "r3", 0.6)],
        [["scan A"], [], ["scan A"]],
        1,
    ),
    "same-code-after-window": Case(
        [read("A", "r1", 0.0), read("A", "r2", 0.6)], [["scan A"], ["scan A"]], 0
    ),
    "same-code-at-window-edge": Case(
        [read("A", "r1", 0.0), read("A", "r2", 0.5)], [["scan A"], ["scan A"]], 0
    ),
    "other-code-in-between-still-double-read": Case(
        [read("A", "r1", 0.0), read("B", "r2", 0.1), read("A", "r3", 0.2)],
        [["scan A"], ["scan B"], []],
        1,
    ),
    "window-uses-source-time-not-receive-time": Case(
        [read("A", "r1", 0.0, recv=10.0), read("A", "r2", 2.0, recv=10.05)],
        [["scan A"], ["scan A"]],
        0,
    ),
    "late-delivered-double-read": Case(
        [read("A", "r1", 0.0, recv=0.01), read("A", "r2", 0.1, recv=30.0)],
        [["scan A"], []],
        1,
    ),
    "different-code-within-window": Case(
        [read("A", "r1", 0.0), read("B", "r2", 0.1)], [["scan A"], ["scan B"]], 0
    ),
    "noread": Case([read("NOREAD", "r1", 0.0)], [["exception no_read"]], 0),
    "empty-code": Case([read("", "r1", 0.0)], [["exception no_read"]], 0),
    "noreads-never-debounced": Case(
        [read("NOREAD", "r1", 0.0), read("NOREAD", "r2", 0.1)],
        [["exception no_read"], ["exception no_read"]],
        0,
    ),
    "noread-keeps-double-read-window": Case(
        [read("A", "r1", 0.0), read("NOREAD", "r2", 0.05), read("A", "r3", 0.1)],
        [["scan A"], ["exception no_read"], []],
        1,
    ),
    "debounce-0-disables": Case(
        [read("A", "r1", 0.0), read("A", "r2", 0.0), read("A", "r3", 0.1)],
        [["scan A"], ["scan A"], ["scan A"]],
        0,
        debounce=0.0,
    ),
    "no-read-id-identical-digest-is-redelivery": Case(
        [read("A", None, 0.0, digest="d1"), read("A", None, 0.0, digest="d1")],
        [["scan A"], ["scan A"]],
        0,
    ),
    "no-read-id-new-digest-is-double-read": Case(
        [read("A", None, 0.0, digest="d1"), read("A", None, 0.1, digest="d2")],
        [["scan A"], []],
        1,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_feed(case: Case) -> None:
    rec = recognizer(case.debounce)
    got = [summary(rec.feed(sig)) for sig in case.signals]
    assert got == case.expected
    assert rec.debounced == case.debounced


def test_debounce_memory_is_bounded() -> None:
    rec = recognizer(debounce=60.0)
    for i in range(MAX_RECENT_CODES + 1):
        assert rec.feed(read(f"C{i}", f"r{i}", i * 1e-3))
    # The oldest code was forgotten to keep memory bounded; the newest is still known.
    assert summary(rec.feed(read("C0", "again-0", 5.0))) == ["scan C0"]
    assert rec.feed(read(f"C{MAX_RECENT_CODES}", "again-n", 5.0)) == []
    assert rec.debounced == 1


def test_normal_read_event() -> None:
    sig = read("TOTE-000123", "r-77", 0.35, recv=0.361, symbology="EAN13")
    (ev,) = recognizer().feed(sig)
    assert ev.type == "scan"
    assert ev.priority is Priority.BUSINESS
    assert sig.source_time is not None
    ms = round(sig.source_time * 1000)
    assert ev.event_id == make_event_id(SITE, DEVICE, f"read:r-77@{ms}")
    doc = ev.to_dict()
    assert doc["site"] == SITE
    assert doc["device"] == DEVICE
    assert doc["correlation_id"] == "code:TOTE-000123"
    assert doc["occurred_at"] == "2026-11-23T10:15:02.350Z"
    assert doc["observed_at"] == "2026-11-23T10:15:02.361Z"
    assert doc["priority"] == "business"
    assert doc["data"] == {
        "code": "TOTE-000123",
        "symbology": "EAN13",
        "read_id": "r-77",
        "reader": DEVICE,
        "location": LOCATION,
    }


def test_redelivery_gives_the_same_event_id() -> None:
    rec = recognizer()
    (first,) = rec.feed(read("A", "r1", 0.0))
    (again,) = rec.feed(read("A", "r1", 0.0, recv=30.0))
    assert again.event_id == first.event_id
    assert rec.debounced == 0
    # A fresh recognizer (a restart) derives the same id too: it comes from the source.
    (after_restart,) = recognizer().feed(read("A", "r1", 0.0, recv=60.0))
    assert after_restart.event_id == first.event_id


def test_read_counter_restart_does_not_reuse_event_ids() -> None:
    # A scanner power-cycled at night starts counting read ids at 1 again.
    (before,) = recognizer().feed(read("A", "1", 0.0))
    (after,) = recognizer().feed(read("B", "1", 86_400.0))
    assert before.event_id != after.event_id


def test_unstamped_read_keys_on_read_id_alone() -> None:
    (ev,) = recognizer().feed(read("A", "r5", None, recv=3.0))
    assert ev.event_id == make_event_id(SITE, DEVICE, "read:r5")


def test_different_read_ids_give_different_event_ids() -> None:
    (a,) = recognizer().feed(read("A", "r1", 0.0))
    (b,) = recognizer().feed(read("A", "r2", 0.0))
    assert a.event_id != b.event_id


def test_noread_event() -> None:
    rec = ScannerRecognizer(
        site=SITE, device=DEVICE, location=LOCATION, no_read_codes=frozenset({"NR", "?"})
    )
    sig = read("NR", "r9", 1.0)
    (ev,) = rec.feed(sig)
    assert ev.type == "exception"
    assert ev.priority is Priority.EXCEPTION
    doc = ev.to_dict()
    assert doc["priority"] == "exception"
    assert doc["correlation_id"] is None
    assert doc["data"] == {
        "reason": "no_read",
        "reader": DEVICE,
        "read_id": "r9",
        "location": LOCATION,
    }
    assert sig.source_time is not None
    assert ev.event_id == make_event_id(SITE, DEVICE, f"read:r9@{round(sig.source_time * 1000)}")
    # With custom no-read codes, NOREAD is an ordinary code.
    assert [e.type for e in rec.feed(read("NOREAD", "r10", 2.0))] == ["scan"]


def test_missing_source_time_uses_receive_time() -> None:
    (ev,) = recognizer().feed(read("A", "r1", None, recv=2.5))
    doc = ev.to_dict()
    assert doc["occurred_at"] == format_time(T0 + 2.5)
    assert doc["occurred_at"] == doc["observed_at"]


def test_missing_source_time_debounces_on_receive_time() -> None:
    rec = recognizer()
    assert rec.feed(read("A", "r1", None, recv=0.0))
    assert rec.feed(read("A", "r2", None, recv=0.1)) == []
    assert rec.feed(read("A", "r3", None, recv=0.7))
    assert rec.debounced == 1


def test_no_read_id_uses_the_payload_digest() -> None:
    (a,) = recognizer().feed(read("A", None, 0.0, digest="aaaa"))
    (same,) = recognizer().feed(read("A", None, 9.0, digest="aaaa"))
    (other,) = recognizer().feed(read("A", None, 0.0, digest="bbbb"))
    assert a.event_id == same.event_id == make_event_id(SITE, DEVICE, "msg:aaaa")
    assert other.event_id != a.event_id
    assert a.to_dict()["data"]["read_id"] is None


def test_read_id_and_digest_keys_do_not_collide() -> None:
    (by_id,) = recognizer().feed(read("A", "x", 0.0))
    (by_digest,) = recognizer().feed(read("A", None, 0.0, digest="x"))
    assert by_id.event_id != by_digest.event_id


def test_feed_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock() -> float:
        raise AssertionError("a recognizer must not read the clock")

    for name in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"):
        monkeypatch.setattr(time, name, no_clock)
    rec = recognizer()
    events = [*rec.feed(read("A", "r1", 0.0)), *rec.feed(read("NOREAD", "r2", 0.1))]
    assert [e.type for e in events] == ["scan", "exception"]


# -- decode_scanner_read -------------------------------------------------------------------

FIELDS = ScannerFields()
LIMIT = 65536
RECV = T0 + 0.5


def decode(
    payload: bytes | dict[str, Any], fields: ScannerFields = FIELDS, limit: int = LIMIT
) -> Signal:
    raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    return decode_scanner_read(raw, fields, DEVICE, RECV, limit)


def test_decode_valid_payload() -> None:
    sig = decode(
        {
            "code": "TOTE-000123",
            "read_id": "r-0001",
            "timestamp": "2026-11-23T10:15:02.350Z",
            "symbology": "CODE128",
        }
    )
    assert sig == Signal(
        device=DEVICE,
        point="read",
        value="TOTE-000123",
        receive_time=RECV,
        source_time=pytest.approx(T0 + 0.35),  # type: ignore[arg-type]
        source_seq="r-0001",
        attrs={"symbology": "CODE128"},
    )


def test_decode_numbers_become_strings() -> None:
    sig = decode({"code": 4006381333931, "read_id": 42})
    assert sig.value == "4006381333931"
    assert sig.source_seq == "42"


def test_decode_custom_dotted_fields() -> None:
    fields = ScannerFields(
        code="scan.barcode", read_id="scan.meta.id", timestamp="ts", symbology="scan.type"
    )
    payload = {
        "scan": {"barcode": "PKG-9", "meta": {"id": 7}, "type": "QR"},
        "ts": "2026-11-23T12:15:02+02:00",
        "code": "not this one",
    }
    sig = decode(payload, fields)
    assert sig.value == "PKG-9"
    assert sig.source_seq == "7"
    assert sig.source_time == pytest.approx(T0)
    assert sig.attrs["symbology"] == "QR"


def test_decode_epoch_millisecond_timestamp() -> None:
    sig = decode({"code": "A", "read_id": "r1", "timestamp": 1_795_428_902_350})
    assert sig.source_time == pytest.approx(T0 + 0.35)
    sig = decode({"code": "A", "read_id": "r1", "timestamp": 1_795_428_902.35})
    assert sig.source_time == pytest.approx(T0 + 0.35)


def test_decode_optional_fields_absent() -> None:
    payload = json.dumps({"code": "A"}).encode()
    sig = decode(payload)
    assert sig.source_time is None
    assert sig.source_seq is None
    assert sig.attrs["symbology"] is None
    assert sig.attrs["digest"] == hashlib.sha1(payload).hexdigest()
    # null counts as absent; a non-string symbology is ignored
    sig = decode({"code": "A", "read_id": None, "timestamp": None, "symbology": 5})
    assert (sig.source_seq, sig.source_time, sig.attrs["symbology"]) == (None, None, None)
    assert "digest" in sig.attrs


def test_decode_digest_tracks_the_payload_bytes() -> None:
    a = decode(b'{"code": "A"}')
    same = decode(b'{"code": "A"}')
    other = decode(b'{"code": "A", "n": 2}')
    assert a.attrs["digest"] == same.attrs["digest"]
    assert a.attrs["digest"] != other.attrs["digest"]
    assert "digest" not in decode({"code": "A", "read_id": "r1"}).attrs


def test_decode_unmapped_fields_are_ignored() -> None:
    fields = ScannerFields(read_id=None, timestamp=None, symbology=None)
    sig = decode({"code": "A", "read_id": "r1", "timestamp": "junk", "symbology": "X"}, fields)
    assert (sig.source_seq, sig.source_time, sig.attrs["symbology"]) == (None, None, None)


def test_decode_size_limit() -> None:
    payload = json.dumps({"code": "A", "pad": "x" * 100}).encode()
    assert decode(payload, limit=len(payload)).value == "A"
    with pytest.raises(IngestError) as info:
        decode(payload, limit=len(payload) - 1)
    assert info.value.kind == "too_large"
    assert str(len(payload)) in info.value.detail


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"{not json", "not_json"),
        (b"", "not_json"),
        (b'{"code": "\xff\xfe"}', "not_json"),
        (b"\xc3\x28", "not_json"),
        (b'["A"]', "not_object"),
        (b'"A"', "not_object"),
        (b"null", "not_object"),
        (b'{"barcode": "A"}', "missing_field"),
        (b'{"code": {"value": "A"}}', "bad_field"),
        (b'{"code": true}', "bad_field"),
        (b'{"code": null}', "bad_field"),
        (b'{"code": 1.5}', "bad_field"),
        (b'{"code": "A", "read_id": 1.5}', "bad_field"),
        (b'{"code": "A", "read_id": [1.0, 2.0]}', "bad_field"),
        (b'{"code": "A", "read_id": false}', "bad_field"),
        (b'{"code": "A", "timestamp": "yesterday"}', "bad_timestamp"),
        (b'{"code": "A", "timestamp": true}', "bad_timestamp"),
        (b'{"code": "A", "timestamp": {"s": 1}}', "bad_timestamp"),
        (b'{"code": "A", "timestamp": NaN}', "bad_timestamp"),
        (b'{"code": "A", "timestamp": Infinity}', "bad_timestamp"),
        (b'{"code": "A", "timestamp": 1e20}', "bad_timestamp"),
    ],
    ids=[
        "not-json",
        "empty",
        "invalid-utf8-in-string",
        "invalid-utf8",
        "json-list",
        "json-string",
        "json-null",
        "missing-code",
        "code-dict",
        "code-bool",
        "code-null",
        "code-float",
        "read-id-float",
        "read-id-float-list",
        "read-id-bool",
        "timestamp-garbage",
        "timestamp-bool",
        "timestamp-object",
        "timestamp-nan",
        "timestamp-infinity",
        "timestamp-out-of-range",
    ],
)
def test_decode_errors(payload: bytes, kind: str) -> None:
    with pytest.raises(IngestError) as info:
        decode(payload)
    assert info.value.kind == kind
    assert info.value.detail
    assert str(info.value).startswith(f"{kind}: ")


def test_decode_missing_custom_field_names_the_path() -> None:
    fields = ScannerFields(code="scan.barcode")
    with pytest.raises(IngestError) as info:
        decode({"scan": {"code": "A"}}, fields)
    assert info.value.kind == "missing_field"
    assert "scan.barcode" in info.value.detail
    with pytest.raises(IngestError) as info:
        decode({"scan": "A"}, fields)
    assert info.value.kind == "missing_field"


def test_every_decoded_timestamp_makes_an_event() -> None:
    # Whatever the decoder accepts, the recognizer can turn into an event.
    for ts in (0, -1.5, 1e11, 1e11 + 1, "0001-01-01T00:00:00", 253402300799):
        sig = decode({"code": "A", "read_id": "r1", "timestamp": ts})
        (ev,) = recognizer().feed(sig)
        assert ev.to_dict()["occurred_at"].endswith("Z")
