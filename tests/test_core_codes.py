"""The site's code classification and the central identity step, as tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.core.codes import CodeRule, Identity
from gateway.core.events import Event, Priority
from gateway.core.records import IngestDeadLetter

CODES = [CodeRule(pattern=r"TOTE-\d+", kind="container"),
         CodeRule(pattern=r"CARTON-\d+", kind="carton"),
         CodeRule(pattern=r"SKU-\d+", kind="sku"),
         CodeRule(pattern=r"(TOTE|SKU)-X", kind="label"),
         CodeRule(pattern=r"[A-Z]+-\d{2}", kind="location")]


def _event(type: str, data: dict[str, Any], correlation: str | None = None) -> Event:
    return Event.create(site="S", device="d", type=type, source_key="k", occurred_at=1e9,
                        observed_at=1e9, data=data, correlation_id=correlation)


@pytest.mark.parametrize(("code", "kind"), [
    ("TOTE-000123", "container"),
    ("CARTON-1", "carton"),
    ("SKU-0042", "sku"),
    ("TOTE-X", "label"),          # the first matching rule wins: TOTE-\d+ does not match
    ("PACK-01", "location"),
    ("PACK-001", None),           # the pattern must match the whole code
    ("xTOTE-1", None),
    ("", None),
])
def test_classification_first_match_of_the_whole_code(code: str, kind: str | None) -> None:
    assert Identity.of(CODES).kind(code) == kind


@pytest.mark.parametrize(("type", "data", "before", "data_after", "correlation"), [
    # scans: the code's kind; a container or carton code is the container
    ("scan", {"code": "TOTE-1"}, "code:TOTE-1",
     {"code": "TOTE-1", "code_kind": "container", "container": "TOTE-1"}, "container:TOTE-1"),
    ("scan", {"code": "CARTON-9"}, "code:CARTON-9",
     {"code": "CARTON-9", "code_kind": "carton", "container": "CARTON-9"}, "container:CARTON-9"),
    ("scan", {"code": "SKU-1"}, "code:SKU-1", {"code": "SKU-1", "code_kind": "sku"}, "code:SKU-1"),
    ("scan", {"code": "ZZZ"}, "code:ZZZ", {"code": "ZZZ", "code_kind": None}, "code:ZZZ"),
    # any event naming a container joins by it, whatever the recognizer said
    ("move", {"container": "TOTE-1", "to": "Z1"}, "tote:TOTE-1",
     {"container": "TOTE-1", "to": "Z1"}, "container:TOTE-1"),
    ("move", {"container": "TOTE-1"}, "code:TOTE-1", {"container": "TOTE-1"},
     "container:TOTE-1"),
    ("pick", {"container": "TOTE-1", "order": "O-1"}, None,
     {"container": "TOTE-1", "order": "O-1"}, "container:TOTE-1"),
    # an order but no container
    ("pack", {"order": "O-1", "container": None}, "x", {"order": "O-1", "container": None},
     "order:O-1"),
    # neither: the recognizer's correlation stays
    ("exception", {"reason": "jam"}, "fault:1:2", {"reason": "jam"}, "fault:1:2"),
    ("exception", {"reason": "divert", "container": None}, None,
     {"reason": "divert", "container": None}, None),
])
def test_identity_table(type: str, data: dict[str, Any], before: str | None,
                        data_after: dict[str, Any], correlation: str | None) -> None:
    ev = _event(type, data, before)
    out = Identity.of(CODES).event(ev).to_dict()
    assert out["data"] == data_after and out["correlation_id"] == correlation
    # The id comes from the source, never from this step; the rest of the body stays.
    assert out["event_id"] == ev.event_id
    assert {k: v for k, v in out.items() if k not in ("data", "correlation_id")} == {
        k: v for k, v in ev.to_dict().items() if k not in ("data", "correlation_id")}


def test_without_codes_scans_have_no_kind_and_keep_their_code_correlation() -> None:
    ident = Identity()
    scan = ident.event(_event("scan", {"code": "TOTE-1"}, "code:TOTE-1")).to_dict()
    assert scan["data"] == {"code": "TOTE-1", "code_kind": None}
    assert scan["correlation_id"] == "code:TOTE-1"
    move = ident.event(_event("move", {"container": "TOTE-1"}, "tote:TOTE-1")).to_dict()
    assert move["correlation_id"] == "container:TOTE-1"


def test_unchanged_events_are_the_same_objects_and_dead_letters_pass() -> None:
    ident = Identity.of(CODES)
    done = ident.event(_event("move", {"container": "TOTE-1"}, "container:TOTE-1"))
    tele = Event.create(site="S", device="d", type="telemetry", source_key="t", occurred_at=1.0,
                        observed_at=1.0, data={"value": 1}, priority=Priority.TELEMETRY)
    dl = IngestDeadLetter(device="d", reason="x", payload=b"{}")
    records = [done, tele, dl]
    assert ident.apply(records) is records
    # Applying twice changes nothing more.
    once = ident.apply([_event("scan", {"code": "TOTE-1"}, "code:TOTE-1")])
    assert ident.apply(once) is once


def _config(codes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"site": {"id": "S", "codes": codes}, "store": {"path": "b.db"}}


@pytest.mark.parametrize(("codes", "problem"), [
    ([{"pattern": "TOTE-\\d+", "kind": "container"}, {"pattern": "SKU-\\d+", "kind": "sku"},
      {"pattern": "(unclosed", "kind": "sku"}], "site.codes[2].pattern: bad regex '(unclosed'"),
    ([{"pattern": "X", "kind": "pallet"}], "site.codes[0].kind"),
    ([{"pattern": "X"}], "site.codes[0].kind: required key is missing"),
    ([{"pattern": "X", "kind": "sku", "colour": 1}], "site.codes[0].colour: unknown key"),
])
def test_check_names_the_key_of_a_bad_code_rule(tmp_path: Any, codes: list[dict[str, Any]],
                                                problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(codes), tmp_path / "site.toml")
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_codes_are_read_in_order(tmp_path: Any) -> None:
    cfg = parse_config(_config([{"pattern": "A.*", "kind": "sku"},
                                {"pattern": "AB.*", "kind": "container"}]), tmp_path / "s.toml")
    assert Identity.of(cfg.site.codes).kind("ABC") == "sku"


@pytest.mark.parametrize(("type", "data", "before"), [
    ("scan", {"code": "TOTE-1", "symbology": None, "reader": "d"}, "code:TOTE-1"),
    ("scan", {"code": "SKU-1", "reader": "d"}, "code:SKU-1"),
    ("scan", {"code": "Süd-\"7\"", "reader": "d"}, "code:x"),
    ("scan", {"reader": "d", "code": "CARTON-2"}, None),
    ("move", {"container": "TOTE-1", "from": "Z1"}, "container:TOTE-1"),
    ("move", {"container": "TOTE-1", "from": "Z1"}, "container:TOTE-2"),
    ("move", {"from": "Z1", "container": "TOTE-\\1"}, "tote:x"),
])
def test_the_body_stays_canonical_json(type: str, data: dict[str, Any],
                                       before: str | None) -> None:
    """What the step writes is what encoding the whole document anew would write."""
    out = Identity.of(CODES).event(_event(type, data, before))
    doc = out.to_dict()
    assert out.body == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    container = doc["data"].get("container")
    if container:
        assert doc["correlation_id"] == f"container:{container}"
