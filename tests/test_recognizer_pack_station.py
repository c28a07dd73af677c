"""The pack station recognizer as tables: task, scans, scale, close in; packs, exceptions out."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.core.codes import CodeRule, Identity
from gateway.core.events import Event, Signal, format_time, make_event_id
from gateway.core.records import IngestDeadLetter, Record
from gateway.mapping.stations import resolve_station
from gateway.recognizers.pack_station import PackStationRecognizer

SITE, DEV = "DC-EAST-1", "pack-01"
T0 = 1_800_000_000.0
TOPIC = f"site/{SITE}/pack/PACK-01"
CODES = Identity.of([CodeRule(pattern=r"TOTE-\d+", kind="container"),
                     CodeRule(pattern=r"CARTON-\d+", kind="carton"),
                     CodeRule(pattern=r"SKU-\d+", kind="sku")])


class Bench:
    """Drives one recognizer with the site simulator's messages, time moving on."""

    def __init__(self, codes: Identity | None = CODES, **station: Any) -> None:
        self.rec = PackStationRecognizer(
            site=SITE, device=DEV, location="PACK-01",
            config=resolve_station("pack_station", {"preset": "pack-bench-json", **station}))
        if codes is not None:
            self.rec.use_identity(codes)
        self.t = T0
        self.read_id = 0

    def _msg(self, what: str, doc: dict[str, Any], dt: float) -> list[Record]:
        self.t += dt
        doc = {**doc, "timestamp": format_time(self.t)}
        return self.rec.feed(Signal(device=DEV, point="message", value=doc,
                                    receive_time=self.t + 0.01,
                                    attrs={"topic": f"{TOPIC}/{what}"}))

    def task(self, items: list[dict[str, Any]] | None = None, expected: float | None = 1.5,
             container: str = "TOTE-1") -> list[Record]:
        doc: dict[str, Any] = {"container": container, "order": "ORD-1", "carton": "CARTON-1",
                               "expected_weight_kg": expected}
        if items is not None:
            doc["items"] = items
        return self._msg("task", doc, 0.1)

    def scan(self, code: str, qty: int | None = None, dt: float = 0.25) -> list[Record]:
        self.read_id += 1
        doc: dict[str, Any] = {"code": code, "read_id": self.read_id, "symbology": "CODE128"}
        if qty is not None:
            doc["qty"] = qty
        return self._msg("scanner/reads", doc, dt)

    def scale(self, kg: float) -> list[Record]:
        return self._msg("scale", {"weight_kg": kg}, 0.1)

    def close(self, seq: int, carton: str | None = "CARTON-1", dt: float = 0.1) -> list[Record]:
        doc: dict[str, Any] = {"close_seq": seq}
        if carton is not None:
            doc["carton"] = carton
        return self._msg("close", doc, dt)


def _events(records: list[Record]) -> list[dict[str, Any]]:
    assert all(isinstance(r, Event) for r in records), records
    return [r.to_dict() for r in records if isinstance(r, Event)]


ITEMS = [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-2", "qty": 1}]


def _pack(bench: Bench, weight: float = 1.5) -> list[dict[str, Any]]:
    bench.task(ITEMS)
    assert [e["type"] for e in _events(bench.scan("TOTE-1"))] == ["scan"]
    bench.scan("SKU-1", qty=2)
    bench.scan("SKU-2")
    bench.scan("CARTON-1")
    bench.scale(weight)
    return _events(bench.close(7))


def test_a_pack_with_its_items_weight_order_and_id_from_the_close_seq() -> None:
    out = _pack(Bench())
    assert len(out) == 1
    pack = out[0]
    assert pack["type"] == "pack" and pack["event_id"] == make_event_id(SITE, DEV, "close:7")
    assert pack["data"] == {"container": "TOTE-1", "carton": "CARTON-1", "items": ITEMS,
                            "weight_kg": 1.5, "station": DEV, "order": "ORD-1",
                            "close_seq": "7"}


@pytest.mark.parametrize(("weight", "reason"), [
    (1.5, None), (1.7, None), (1.3, None),       # within 0.2 kg
    (1.71, "overweight"), (6.5, "overweight"), (1.29, "underweight"), (0.0, "underweight"),
])
def test_weight_outside_the_tolerance(weight: float, reason: str | None) -> None:
    out = _pack(Bench(), weight)
    assert out[0]["type"] == "pack" and out[0]["data"]["weight_kg"] == weight
    if reason is None:
        assert len(out) == 1
        return
    exc = out[1]
    assert exc["type"] == "exception" and exc["event_id"] == make_event_id(SITE, DEV, "weight:7")
    assert exc["data"] == {"reason": reason, "container": "TOTE-1", "carton": "CARTON-1",
                           "weight_kg": weight, "expected_weight_kg": 1.5, "tolerance_kg": 0.2,
                           "station": DEV, "order": "ORD-1"}


def test_percent_tolerance_and_scale_in_grams() -> None:
    bench = Bench(tolerance_kg=0.0, tolerance_pct=10.0, weight_factor=0.001)
    bench.task(ITEMS, expected=10.0)
    bench.scan("TOTE-1")
    bench.scale(10_900)
    assert [e["type"] for e in _events(bench.close(1))] == ["pack"]
    bench.task(ITEMS, expected=10.0, container="TOTE-2")
    bench.scan("TOTE-2")
    bench.scale(11_100)
    out = _events(bench.close(2))
    assert out[1]["data"]["reason"] == "overweight" and out[1]["data"]["weight_kg"] == 11.1


def test_an_item_the_order_does_not_hold() -> None:
    bench = Bench()
    bench.task(ITEMS)
    bench.scan("TOTE-1")
    bench.scan("SKU-1", qty=2)
    out = _events(bench.scan("SKU-9"))
    assert [e["type"] for e in out] == ["scan", "exception"]
    key = out[0]["data"]["read_id"]
    assert out[1]["event_id"] == make_event_id(
        SITE, DEV, f"item:read:{key}@{round(bench.t * 1000)}")
    assert out[1]["data"] == {"reason": "item_not_in_order", "sku": "SKU-9",
                              "container": "TOTE-1", "order": "ORD-1", "station": DEV}
    bench.scale(1.5)
    pack = _events(bench.close(1))[0]
    assert pack["data"]["items"] == [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-9", "qty": 1}]


def test_a_task_that_says_nothing_of_its_items_checks_none() -> None:
    bench = Bench()
    bench.task(None, expected=None)
    bench.scan("TOTE-1")
    assert [e["type"] for e in _events(bench.scan("SKU-9"))] == ["scan"]
    bench.scale(99.0)
    assert [e["type"] for e in _events(bench.close(1))] == ["pack"]   # no expected weight


def test_an_abandoned_pack_is_reported_on_the_next_message_at_its_deadline() -> None:
    bench = Bench(abandon_after="5s")
    bench.task(ITEMS)
    first = _events(bench.scan("TOTE-1"))[0]
    bench.scan("SKU-1", qty=2)
    last = bench.t
    # Within the timeout nothing happens, whatever arrives.
    assert [e["type"] for e in _events(bench.scale(1.0))] == []
    out = _events(bench.scan("TOTE-1", dt=6.0))
    assert [e["type"] for e in out] == ["exception", "scan"]
    key = f"read:{first['data']['read_id']}@{round((T0 + 0.35) * 1000)}"
    assert out[0]["event_id"] == make_event_id(SITE, DEV, f"abandon:{key}")
    assert out[0]["occurred_at"] == format_time(last + 5.0)
    assert out[0]["data"] == {"reason": "pack_abandoned", "container": "TOTE-1",
                              "carton": None, "order": "ORD-1",
                              "items": [{"sku": "SKU-1", "qty": 2}], "station": DEV,
                              "idle_s": 5.0}
    # The tote scanned again opened a new pack, which closes normally.
    bench.scan("SKU-1", qty=2)
    bench.scan("SKU-2")
    bench.scale(1.5)
    assert [e["type"] for e in _events(bench.close(8))] == ["pack"]


def test_repeats_have_the_same_ids() -> None:
    a, b = Bench(), Bench()
    assert _pack(a, 9.0) == _pack(b, 9.0)
    assert [e["event_id"] for e in _pack(Bench(), 9.0)] == [
        make_event_id(SITE, DEV, "close:7"), make_event_id(SITE, DEV, "weight:7")]


def test_a_close_with_nothing_open_is_a_dead_letter() -> None:
    bench = Bench()
    out = bench.close(3)
    assert len(out) == 1 and isinstance(out[0], IngestDeadLetter)
    assert out[0].reason.startswith("no_open_pack: close '3'")


def test_after_a_restart_the_retained_task_recovers_the_open_pack() -> None:
    """Scans before the restart are gone; the task and the scale are retained."""
    bench = Bench()
    bench.task(ITEMS)          # the broker's retained copy, on subscribe
    bench.scale(1.5)           # retained too
    bench.scan("CARTON-1")
    pack = _events(bench.close(7))[0]
    assert pack["data"] == {"container": "TOTE-1", "carton": "CARTON-1", "items": ITEMS,
                            "weight_kg": 1.5, "station": DEV, "order": "ORD-1",
                            "close_seq": "7", "recovered": True}
    # That task's container is closed: another close finds nothing open.
    assert isinstance(bench.close(8)[0], IngestDeadLetter)


def test_a_close_queued_before_the_retained_task_is_booked_when_the_task_comes() -> None:
    bench = Bench()
    bench.scale(1.5)
    dead = bench.close(7)
    assert isinstance(dead[0], IngestDeadLetter)
    close_time = bench.t
    pack = _events(bench.task(ITEMS))[0]
    assert pack["event_id"] == make_event_id(SITE, DEV, "close:7")
    assert pack["occurred_at"] == format_time(close_time)
    assert pack["data"]["items"] == ITEMS and pack["data"]["recovered"] is True
    # A task for another carton does not take a close that names its own.
    bench = Bench()
    bench.close(8, carton="CARTON-9")
    assert bench.task(ITEMS) == []


def test_a_close_naming_its_pack_is_booked_whatever_the_gateway_remembers() -> None:
    """After a restart the bench has moved on: the retained task is the next tote's."""
    bench = Bench()
    bench.task(ITEMS, container="TOTE-4")
    bench.scale(9.9)
    items = [{"sku": "SKU-7", "qty": 3}]
    out = _events(bench._msg("close", {"close_seq": 5, "carton": "CARTON-2",
                                       "container": "TOTE-2", "order": "ORD-2",
                                       "items": items, "weight_kg": 1.0,
                                       "expected_weight_kg": 2.5}, 0.1))
    assert [e["type"] for e in out] == ["pack", "exception"]
    assert out[0]["data"] == {"container": "TOTE-2", "carton": "CARTON-2", "items": items,
                              "weight_kg": 1.0, "station": DEV, "order": "ORD-2",
                              "close_seq": "5", "recovered": True}
    assert out[1]["data"]["reason"] == "underweight"
    # The next tote's pack is still to come, from its task.
    bench.scan("TOTE-4")
    bench.scan("SKU-1", qty=2)
    bench.scan("SKU-2")
    bench.scale(1.5)
    pack = _events(bench.close(6))[0]
    assert pack["data"]["container"] == "TOTE-4" and pack["data"]["items"] == ITEMS
    assert "recovered" not in pack["data"]


def test_without_site_codes_the_task_and_the_order_of_scans_tell_codes_apart() -> None:
    bench = Bench(codes=None)
    out = _pack(bench)
    assert out[0]["data"]["items"] == ITEMS and out[0]["data"]["carton"] == "CARTON-1"
    # No task: the first code is the container, later ones items; the close names the carton.
    bench = Bench(codes=None)
    bench.scan("BIN-77")
    bench.scan("ITEM-A")
    bench.scale(2.0)
    pack = _events(bench.close(9, carton="BOX-1"))[0]
    assert pack["data"]["container"] == "BIN-77" and pack["data"]["carton"] == "BOX-1"
    assert pack["data"]["items"] == [{"sku": "ITEM-A", "qty": 1}] and pack["data"]["order"] is None


def test_out_of_order_scale_after_items_and_carton_before_items() -> None:
    bench = Bench()
    bench.task(ITEMS)
    bench.scan("TOTE-1")
    bench.scan("CARTON-1")
    bench.scale(1.5)
    bench.scan("SKU-2")
    bench.scan("SKU-1", qty=2)
    pack = _events(bench.close(7, carton=None))[0]
    assert pack["data"]["carton"] == "CARTON-1" and pack["data"]["weight_kg"] == 1.5
    assert pack["data"]["items"] == [{"sku": "SKU-2", "qty": 1}, {"sku": "SKU-1", "qty": 2}]


def test_a_modbus_scale_and_close_counter_by_points() -> None:
    """A polled bench: the scale register and the close counter are points."""
    station = {"messages": {
        "task": {"point": "task_tote", "fields": {"container": "task_tote"}},
        "scan": {"point": "last_code", "fields": {"code": "last_code", "read_id": "scan_seq"}},
        "scale": {"point": "scale_g", "fields": {"weight": "scale_g"}},
        "close": {"point": "close_seq", "fields": {"seq": "close_seq"}}},
        "weight_factor": 0.001}
    rec = PackStationRecognizer(site=SITE, device="bench-plc",
                                config=resolve_station("pack_station", station))
    rec.use_identity(CODES)
    assert rec.inputs == {"task_tote", "last_code", "scan_seq", "scale_g", "close_seq"}

    def poll(t: float, **values: Any) -> list[Record]:
        return rec.feed_poll([Signal(device="bench-plc", point=p, value=v, receive_time=t)
                              for p, v in values.items()], t)

    poll(T0, task_tote="TOTE-5")
    poll(T0 + 1, last_code="TOTE-5", scan_seq=1)
    poll(T0 + 2, last_code="SKU-3", scan_seq=2)
    poll(T0 + 3, scale_g=2500)
    out = _events(poll(T0 + 4, close_seq=41))
    assert out[0]["type"] == "pack" and out[0]["data"]["container"] == "TOTE-5"
    assert out[0]["data"]["weight_kg"] == 2.5 and out[0]["data"]["items"] == [
        {"sku": "SKU-3", "qty": 1}]
    assert out[0]["event_id"] == make_event_id(SITE, "bench-plc", "close:41")


@pytest.mark.parametrize("read_id", [True, False])
def test_a_polled_bench_must_map_its_read_counter(tmp_path: Any, read_id: bool) -> None:
    """A polled scan has no payload to digest: without the read counter every scan of the
    bench would get one event id, so ``check`` refuses it, naming the key."""
    scan: dict[str, Any] = {"point": "last_code", "fields": {"code": "last_code"}}
    if read_id:
        scan["fields"]["read_id"] = "scan_seq"
    station = {"messages": {
        "task": {"point": "task_tote", "fields": {"container": "task_tote"}},
        "scan": scan,
        "scale": {"point": "scale_g", "fields": {"weight": "scale_g"}},
        "close": {"point": "close_seq", "fields": {"seq": "close_seq"}}}}
    points = [{"name": n, "table": "holding", "address": a}
              for a, n in enumerate(["task_tote", "last_code", "scan_seq", "scale_g",
                                     "close_seq"])]
    doc = {"site": {"id": SITE}, "store": {"path": "b.db"},
           "devices": [{"id": "bench-plc", "driver": "modbus", "role": "pack_station",
                        "host": "127.0.0.1", "points": points, "station": station}]}
    if read_id:
        parse_config(doc, tmp_path / "site.toml")
        return
    with pytest.raises(ConfigError) as err:
        parse_config(doc, tmp_path / "site.toml")
    assert any(p.startswith("devices[0].station.messages.scan.fields.read_id: required on a "
                            "polled bench") for p in err.value.problems), err.value.problems
