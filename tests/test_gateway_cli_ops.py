"""The operator command line on real store and config files: --version, init, check's
hints, replay/discard --all with filters and the audit trail, report, events tail,
status from the store."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buffer.ledger import day_of
from buffer.store import Store
from gateway.cli import main
from gateway.core.events import Event
from gateway.core.records import IngestDeadLetter, SinkDeadLetter
from gateway.forwarder import delivered_types

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def event(i: int, device: str = "scan-01", type_: str = "scan") -> Event:
    now = time.time()
    return Event.create(site="DC-EAST-1", device=device, type=type_, source_key=f"read:{i}",
                        occurred_at=now, observed_at=now, data={"code": f"TOTE-{i:06d}"},
                        correlation_id=f"code:TOTE-{i:06d}")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Twenty events kept an hour; wms rejected every fourth (all of scan-01), erp took
    everything; one ingest dead letter."""
    path = tmp_path / "buffer.db"
    store = Store(path, synchronous="NORMAL", retention_s=3600)
    store.register_sinks(["wms", "erp"])
    store.append([[event(i, "scan-01" if i % 2 else "scan-02")] for i in range(20)])
    for sink in ("wms", "erp"):
        rows, scanned = store.read(sink, 0, 100)
        dead = [SinkDeadLetter(r.seq, r.event_id, f"422: unknown container ({sink})")
                for r in rows if sink == "wms" and r.seq % 4 == 0]
        store.advance(sink, scanned, dead, delivered_types(rows, dead))
    store.append([[IngestDeadLetter("scan-01", "not_json: x", b"\xffraw")]])
    store.close()
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.startswith("warehouse-gateway ") and out.strip().split()[1][0].isdigit()


def test_every_option_has_help_text() -> None:
    from gateway.cli import build_parser

    missing = []

    def walk(parser: object, path: str) -> None:
        for action in parser._actions:  # type: ignore[attr-defined]
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.option_strings and not action.help and action.dest != "help":
                missing.append(f"{path} {action.option_strings[0]}")
            elif not action.option_strings and action.dest != "help" and not action.help:
                missing.append(f"{path} <{action.dest}>")

    walk(build_parser(), "warehouse-gateway")
    assert missing == []


def test_init_writes_a_commented_config_that_checks(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "site" / "gateway.toml"
    code, out, err = run(["init", "--config", str(path), "--site", "DC-NORTH-2"], capsys)
    assert code == 0, err
    assert "checked: ok" in out
    text = path.read_text()
    assert 'id = "DC-NORTH-2"' in text
    assert sum(line.startswith("#") for line in text.splitlines()) >= 15
    assert run(["check", "--config", str(path)], capsys)[0] == 0
    code, _, err = run(["init", "--config", str(path)], capsys)
    assert code == 1 and "--force" in err
    assert run(["init", "--config", str(path), "--force"], capsys)[0] == 0


def test_check_reports_every_problem_with_the_nearest_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[site]\nid = "X"\n[store]\npath = "b.db"\nmax_byte = "1 GiB"\n'
                   '[status]\nhostname = "127.0.0.1"\nport = "abc"\n'
                   '[[brokers]]\nid = "site"\nhots = "127.0.0.1"\n'
                   '[[sinks]]\nid = "wms"\ntype = "http"\nulr = "http://x"\n')
    code, _, err = run(["check", "--config", str(cfg)], capsys)
    assert code == 2
    lines = err.splitlines()
    assert "(6 problem(s))" in lines[0]
    for where, hint in (("store.max_byte", "max_bytes"), ("status.hostname", "host"),
                        ("brokers[0].hots", "host"), ("sinks[0].ulr", "url")):
        assert any(f"{where}: unknown key" in ln and f"did you mean {hint!r}" in ln
                   for ln in lines), (where, err)
    assert any("status.port:" in ln for ln in lines)
    assert any("sinks[0].url: required key is missing" in ln for ln in lines)


def test_dead_letters_filters_and_replay_all_matching_with_audit(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["store", "dead-letters", "--db", str(db), "--device", "scan-01",
                        "--reason", "422"], capsys)
    assert code == 0
    rows = [r.split("\t") for r in out.splitlines()[1:]]
    assert [(r[2], r[3], r[4], r[6]) for r in rows] == [("sink", "wms", "scan", "business")] * 5
    assert run(["store", "dead-letters", "--db", str(db), "--device", "scan-02"],
               capsys)[1] == "no dead letters\n"
    code, _, err = run(["store", "replay", "--db", str(db), "--sink", "wms"], capsys)
    assert code == 2 and "--all" in err
    code, _, err = run(["store", "replay", "--db", str(db), "1", "--all"], capsys)
    assert code == 2
    code, out, err = run(["store", "replay", "--db", str(db), "--all", "--sink", "wms",
                          "--reason", "(wms)"], capsys)
    assert code == 0, err
    assert "replayed 5 dead letter(s)" in out
    line = json.loads(err.splitlines()[-1])
    assert (line["event"], line["count"], line["sink"], line["reason"]) == (
        "dead_letters_replayed", 5, "wms", "(wms)")
    code, out, err = run(["store", "discard", "--db", str(db), "--all", "--kind", "ingest"],
                         capsys)
    assert code == 0 and "discarded 1 dead letter(s) (kept in the archive)" in out
    code, out, _ = run(["store", "audit", "--db", str(db)], capsys)
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split("\t")[:6] == ["id", "time (UTC)", "who", "via", "action", "count"]
    assert first.split("\t")[3:6] == ["cli", "discard", "1"]
    assert second.split("\t")[3:7] == ["cli", "replay", "5", "kind=sink reason=(wms) sink=wms"]
    assert run(["store", "dead-letters", "--db", str(db)], capsys)[1] == "no dead letters\n"


def test_report_csv_and_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    day = day_of(time.time())
    code, out, err = run(["report", "--db", str(db), "--day", day], capsys)
    assert code == 0, err
    rows = {(r["type"], r["sink"]): r for r in csv.DictReader(io.StringIO(out))}
    assert rows[("scan", "wms")] == {"day": day, "type": "scan", "sink": "wms",
                                     "accepted": "20", "delivered": "15", "rejected": "5",
                                     "replayed": "0", "discarded": "0", "pending": "0"}
    assert rows[("scan", "erp")]["delivered"] == "20"
    code, out, _ = run(["report", "--db", str(db), "--day", day, "--format", "json"], capsys)
    doc = json.loads(out)
    assert doc["totals"]["accepted"] == 20 and doc["totals"]["ingest_dead_letters"] == 1
    code, _, err = run(["report", "--db", str(db), "--day", "yesterday"], capsys)
    assert code == 2 and "YYYY-MM-DD" in err


def test_events_tail_filters_and_follows(db: Path) -> None:
    tail = subprocess.Popen(
        [sys.executable, "-m", "gateway", "events", "tail", "--db", str(db), "--device",
         "scan-01", "-n", "3", "--follow", "--interval", "0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert tail.stdout is not None
        first = [tail.stdout.readline() for _ in range(3)]
        assert [ln.split("\t")[3] for ln in first] == ["scan-01"] * 3
        assert [int(ln.split("\t")[0]) for ln in first] == [16, 18, 20]
        store = Store(db, synchronous="NORMAL", recover=False)
        try:
            store.append([[event(100, "scan-02")], [event(101, "scan-01")]])
        finally:
            store.close()
        new = tail.stdout.readline()
        assert new.split("\t")[0] == "22" and "TOTE-000101" in new
    finally:
        tail.terminate()
        tail.wait(10)


def test_status_without_a_daemon_reads_the_store(db: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["status", "--db", str(db)], capsys)
    assert code == 3
    assert "gateway not running" in out
    assert "21 events" not in out and "20 events" in out
    assert "dead letters 5 sink, 1 ingest" in out


def test_status_renders_alert_objects_and_sink_figures() -> None:
    from gateway.ops.status_cli import render

    doc = {"site": "DC-1", "ready": True, "uptime_s": 3725, "pid": 7,
           "alerts": [{"severity": "critical", "message": "sink wms unavailable",
                       "since": 1_795_428_902.0, "action": "check the WMS"}, "plain text alert"],
           "sinks": {"wms": {"type": "http", "state": "backoff", "backlog_events": 774,
                             "events_delivered": 10, "dead_letters": 2,
                             "last_success_at": 1_795_428_900.0,
                             "oldest_undelivered_age_s": 95, "down_since": 1_795_428_902.0,
                             "last_error": "cannot connect"}},
           "devices": {"scan-01": {"connected": False, "messages": {"a": 3, "b": 4},
                                   "ingest_errors": {"not_json": 1}, "rejecting_all": True}},
           "store": {"events": 5, "used_bytes": 1024**2, "max_bytes": 2 * 1024**2,
                     "dead_letters": {"sink": 2, "ingest": 1}, "backlog": {"wms": 774}}}
    text = "\n".join(render(doc, "test"))
    assert text.splitlines()[0] == "site DC-1: READY, up 1h02m, pid 7  (test)"
    assert ("! [critical] sink wms unavailable (since 2026-11-23 10:15:02) - check the WMS"
            in text)
    assert "! plain text alert" in text
    assert "backlog 774" in text and "oldest waiting 1m35s" in text
    assert "down since 2026-11-23 10:15:02" in text and "last error: cannot connect" in text
    assert "scan-01" in text and "disconnected" in text and "messages 7" in text
    assert "REJECTING ALL" in text
    assert "1.0 MiB of 2.0 MiB; dead letters 2 sink, 1 ingest" in text
