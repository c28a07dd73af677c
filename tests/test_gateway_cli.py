"""Operator commands on a real store file: stats, dead letters, replay, discard."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from buffer.store import Store
from gateway.cli import main
from gateway.core.events import Event
from gateway.core.records import IngestDeadLetter, SinkDeadLetter

MAIN = Path(__file__).resolve().parents[1]
CLOCK = 1_795_428_902.0
BAD_PAYLOAD = b'{"code": "TOTE-1", broken'


@dataclass(frozen=True)
class Built:
    path: Path
    events: list[Event]
    sink_dl: int
    ingest_dl: int


@pytest.fixture
def built(tmp_path: Path) -> Built:
    """Three events; sinks wms and erp; wms rejected the first; one unreadable message."""
    path = tmp_path / "buffer.db"
    store = Store(path, clock=lambda: CLOCK)
    events = [
        Event.create(
            site="DC-EAST-1",
            device="scan-1",
            type="scan",
            source_key=f"read:r{i}",
            occurred_at=CLOCK + i,
            observed_at=CLOCK + i,
            data={"code": f"TOTE-{i}"},
            correlation_id=f"code:TOTE-{i}",
        )
        for i in range(3)
    ]
    assert store.append([[ev] for ev in events]).inserted == 3
    store.register_sinks(["wms", "erp"])
    store.advance("wms", 1, [SinkDeadLetter(1, events[0].event_id, "422: unknown container")])
    store.append(
        [
            [
                IngestDeadLetter(
                    device="scan-1",
                    reason="not_json: Expecting property name",
                    payload=BAD_PAYLOAD,
                    context={"topic": "scanners/scan-1/read"},
                )
            ]
        ]
    )
    (sink_dl,) = store.dead_letters(kind="sink")
    (ingest_dl,) = store.dead_letters(kind="ingest")
    store.close()
    return Built(path, events, sink_dl.id, ingest_dl.id)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse and some store errors exit directly
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- stats -------------------------------------------------------------------------------


def test_stats(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["store", "stats", "--db", str(built.path)], capsys)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["path"] == str(built.path)
    assert stats["events"] == 3
    assert (stats["first_seq"], stats["last_seq"]) == (1, 3)
    assert stats["cursors"] == {"wms": 1, "erp": 0}
    assert stats["backlog"] == {"wms": 2, "erp": 3}
    assert stats["dead_letters"] == {"sink": 1, "ingest": 1}
    assert stats["counters"]["sink_dead_letters"] == 1
    assert stats["counters"]["ingest_dead_letters"] == 1
    assert stats["open_report"]["corrupt"] is False


def test_stats_from_config(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "site.toml"  # store path relative to the config's folder
    cfg.write_text(
        f'[site]\nid = "DC-EAST-1"\n[store]\npath = "{built.path.name}"\nmax_bytes = "64 MiB"\n'
    )
    code, out, err = run(["store", "stats", "--config", str(cfg)], capsys)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["path"] == str(built.path.resolve())
    assert stats["events"] == 3
    assert stats["max_bytes"] == 64 * 1024**2


def test_stats_with_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nid = "DC-EAST-1"\n')
    code, out, err = run(["store", "stats", "--config", str(cfg)], capsys)
    assert code == 2
    assert out == ""
    assert f"{cfg}: store: required key is missing" in err


def test_missing_store_file_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo" / "bufer.db"
    code, out, err = run(["store", "stats", "--db", str(path)], capsys)
    assert code == 1
    assert out == ""
    assert f"no store file at {path}" in err
    assert not path.exists()
    assert not path.parent.exists()


def test_store_needs_db_or_config(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["store", "stats"], capsys)[0] == 2
    both = ["store", "stats", "--db", str(built.path), "--config", "x.toml"]
    code, _, err = run(both, capsys)
    assert code == 2
    assert "not allowed with" in err


# -- dead letters ------------------------------------------------------------------------


def test_dead_letters_lists_both(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["store", "dead-letters", "--db", str(built.path)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].split("\t") == ["id", "time (UTC)", "kind", "sink/device", "type",
                                    "container/code", "category", "event id / payload",
                                    "reason"]
    assert lines[1].split("\t") == [
        str(built.sink_dl),
        "2026-11-23 10:15:02",
        "sink",
        "wms",
        "scan",
        "TOTE-0",
        "business",
        built.events[0].event_id,
        "422: unknown container",
    ]
    assert lines[2].split("\t") == [
        str(built.ingest_dl),
        "2026-11-23 10:15:02",
        "ingest",
        "scan-1",
        "-",
        "-",
        "ingest",
        BAD_PAYLOAD.decode(),
        "not_json: Expecting property name",
    ]


@pytest.mark.parametrize(
    ("filters", "kinds"),
    [
        (["--kind", "ingest"], ["ingest"]),
        (["--kind", "sink"], ["sink"]),
        (["--sink", "wms"], ["sink"]),
        (["--sink", "erp"], []),
        (["--limit", "1"], ["sink"]),
    ],
    ids=["kind-ingest", "kind-sink", "sink-wms", "sink-erp", "limit-1"],
)
def test_dead_letters_filters(
    built: Built, capsys: pytest.CaptureFixture[str], filters: list[str], kinds: list[str]
) -> None:
    code, out, _ = run(["store", "dead-letters", "--db", str(built.path), *filters], capsys)
    assert code == 0
    if kinds:
        assert [line.split("\t")[2] for line in out.splitlines()[1:]] == kinds
    else:
        assert out == "no dead letters\n"


def test_dead_letters_after(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["store", "dead-letters", "--db", str(built.path), "--after", str(built.sink_dl)]
    _, out, _ = run(argv, capsys)
    assert [line.split("\t")[0] for line in out.splitlines()[1:]] == [str(built.ingest_dl)]


def test_dead_letters_json(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["store", "dead-letters", "--db", str(built.path), "--json"], capsys)
    assert code == 0
    sink, ingest = (json.loads(line) for line in out.splitlines())
    assert sink["id"] == built.sink_dl
    assert sink["kind"] == "sink"
    assert sink["sink"] == "wms"
    assert sink["event_id"] == built.events[0].event_id
    assert sink["type"] == "scan"
    assert sink["reason"] == "422: unknown container"
    assert base64.b64decode(sink["body_b64"]) == built.events[0].body
    assert ingest["id"] == built.ingest_dl
    assert ingest["kind"] == "ingest"
    assert ingest["sink"] is None
    assert ingest["device"] == "scan-1"
    assert ingest["context"] == {"topic": "scanners/scan-1/read"}
    assert base64.b64decode(ingest["body_b64"]) == BAD_PAYLOAD


def test_dead_letters_json_empty_prints_nothing(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["store", "dead-letters", "--db", str(built.path), "--json", "--sink", "erp"]
    assert run(argv, capsys) == (0, "", "")


# -- replay and discard ------------------------------------------------------------------


def test_replay_sink_dead_letter(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["store", "replay", "--db", str(built.path), str(built.sink_dl)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "replayed 1" in out
    rows = query(
        built.path, "SELECT seq, event_id, only_sink, body FROM events WHERE only_sink IS NOT NULL"
    )
    assert rows == [(4, built.events[0].event_id, "wms", built.events[0].body)]
    assert query(built.path, "SELECT id FROM dead_letters") == [(built.ingest_dl,)]
    # Only the sink that rejected it gets it again.
    store = Store(built.path, recover=False)
    try:
        wms_rows, _ = store.read("wms", 1, 100)
        erp_rows, _ = store.read("erp", 0, 100)
        assert store.counters()["replayed_dead_letters"] == 1
    finally:
        store.close()
    assert [r.seq for r in wms_rows] == [2, 3, 4]
    assert [r.seq for r in erp_rows] == [1, 2, 3]


def test_replay_refuses_ingest_dead_letter(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["store", "replay", "--db", str(built.path), str(built.ingest_dl)]
    code, out, err = run(argv, capsys)
    assert code == 1
    assert out == ""
    assert f"[{built.ingest_dl}]" in err
    assert "ingest dead letters" in err
    assert "cannot be replayed" in err
    assert len(query(built.path, "SELECT id FROM dead_letters")) == 2


def test_replay_missing_id(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["store", "replay", "--db", str(built.path), "999"], capsys)
    assert code == 1
    assert out == ""
    assert "no dead letter with id [999]" in err


def test_replay_is_all_or_nothing(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["store", "replay", "--db", str(built.path), str(built.sink_dl), "999"]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert "999" in err
    assert query(built.path, "SELECT COUNT(*) FROM events") == [(3,)]
    assert len(query(built.path, "SELECT id FROM dead_letters")) == 2


def test_discard(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["store", "discard", "--db", str(built.path), str(built.sink_dl), str(built.ingest_dl)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "discarded 2" in out
    assert query(built.path, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert query(built.path, "SELECT COUNT(*) FROM events") == [(3,)]
    _, out, _ = run(["store", "dead-letters", "--db", str(built.path)], capsys)
    assert out == "no dead letters\n"


def test_discard_one_keeps_the_other(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["store", "discard", "--db", str(built.path), str(built.ingest_dl)]
    assert run(argv, capsys)[0] == 0
    assert query(built.path, "SELECT id, kind FROM dead_letters") == [(built.sink_dl, "sink")]


# -- entry points ------------------------------------------------------------------------


def test_python_m_gateway_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        cwd=MAIN,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warehouse-gateway" in proc.stdout
    for command in ("run", "check", "demo", "store"):
        assert command in proc.stdout


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2
    assert "invalid choice" in err
