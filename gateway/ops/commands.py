"""Operator commands on the store file: dead letters, replay and discard (by id
or by filter), the audit trail, the reconciliation report and ``events tail``.

Every command works on the file while the daemon runs (the store is opened
as a second connection, never recovered or reserved). Replays and discards
are written to the audit trail with the OS user's name (``via = "cli"``) and
logged as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from gateway.core.records import (
    DeadLetter,
    dead_letter_category,
    dead_letter_container,
    dead_letter_json,
)

if TYPE_CHECKING:
    from buffer.store import Store

#: Opens the store named by ``--db`` or ``--config`` (``gateway.cli``).
OpenStore = Callable[[argparse.Namespace], "Store"]
StoreArgs = Callable[[argparse.ArgumentParser], None]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def utc(ts: float | None) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def add_filter_args(sp: argparse.ArgumentParser) -> None:
    """The dead letter filter options (shared by list, replay and discard)."""
    sp.add_argument("--sink", help="only dead letters of this sink (e.g. wms)")
    sp.add_argument("--kind", choices=["sink", "ingest"],
                    help="sink: events an upstream rejected; ingest: source messages that "
                         "never became events")
    sp.add_argument("--reason", help="only dead letters whose reason contains this text "
                                     "(e.g. 422)")
    sp.add_argument("--device", help="only dead letters of this device")
    sp.add_argument("--type", help="only dead letters of this event type (pick, scan, ...)")


def _filter(args: argparse.Namespace) -> Any:
    from buffer.deadletters import DeadLetterFilter

    return DeadLetterFilter(sink=args.sink, kind=args.kind, reason=args.reason,
                            device=args.device, type=args.type)


DEAD_LETTER_HEADER = ("id", "time (UTC)", "kind", "sink/device", "type", "container/code",
                      "category", "event id / payload", "reason")


def dead_letter_row(d: DeadLetter) -> list[str]:
    """One dead letter as the columns of ``DEAD_LETTER_HEADER``."""
    what = d.event_id or d.body[:60].decode("utf-8", "replace")
    return [str(d.id), utc(d.created), d.kind, d.sink or d.device or "-", d.type or "-",
            dead_letter_container(d.body) or "-", dead_letter_category(d.kind, d.reason),
            what, d.reason]


def cmd_dead_letters(args: argparse.Namespace, open_store: OpenStore) -> int:
    """List dead letters: a header, then one tab-separated line each (or JSON lines)."""
    flt = _filter(args)
    store = open_store(args)
    try:
        items = store.dead_letters(sink=flt.sink, kind=flt.kind, reason=flt.reason,
                                   device=flt.device, type=flt.type, limit=args.limit,
                                   after_id=args.after)
    finally:
        store.close()
    if args.json:
        for d in items:
            _out(dead_letter_json(d, bodies=True))
        return 0
    if not items:
        _out("no dead letters")
        return 0
    _out("\t".join(DEAD_LETTER_HEADER))
    for d in items:
        _out("\t".join(dead_letter_row(d)))
    return 0


def cmd_act(args: argparse.Namespace, open_store: OpenStore, action: str) -> int:
    """Replay or discard dead letters by id or, with ``--all``, every one matching."""
    from buffer.store import StoreError

    flt = _filter(args)
    if bool(args.ids) == bool(args.all):
        _err(f"error: give dead letter ids or --all (with filters), not both: "
             f"e.g. store {action} --all --sink wms --reason 422")
        return 2
    if args.ids and flt.given():
        _err("error: filters (--sink, --kind, --reason, --device, --type) need --all")
        return 2
    store = open_store(args)
    try:
        if args.all:
            fn = store.replay_matching if action == "replay" else store.discard_matching
            n = fn(flt, via="cli")
        elif action == "replay":
            n = store.replay(args.ids, via="cli")
        else:
            n = store.discard(args.ids, via="cli")
        trail = store.audit_trail(limit=1)
    except StoreError as err:
        _err(f"error: {err}")
        return 1
    finally:
        store.close()
    entry = trail[0] if trail and n else None
    # One log line on stderr (the daemon logs it too, from the audit trail).
    _err(json.dumps({
        "event": f"dead_letters_{action}ed" if action == "replay" else "dead_letters_discarded",
        "count": n, "via": "cli", "who": entry["who"] if entry else None,
        "audit_id": entry["id"] if entry else None, **flt.given()}))
    _out(f"{action}ed {n} dead letter(s)" if action == "replay"
         else f"discarded {n} dead letter(s) (kept in the archive)")
    return 0


def cmd_audit(args: argparse.Namespace, open_store: OpenStore) -> int:
    """The audit trail, newest first."""
    store = open_store(args)
    try:
        rows = store.audit_trail(limit=args.limit)
    finally:
        store.close()
    if args.json:
        for r in rows:
            _out(json.dumps(r))
        return 0
    if not rows:
        _out("no replays or discards recorded")
        return 0
    _out("\t".join(("id", "time (UTC)", "who", "via", "action", "count", "filter", "ids")))
    for r in rows:
        ids = r["ids"]
        shown = ",".join(map(str, ids[:10])) + (f",... ({len(ids)})" if len(ids) > 10 else "")
        flt = " ".join(f"{k}={v}" for k, v in (r["filter"] or {}).items()) or "-"
        _out("\t".join((str(r["id"]), utc(r["at"]), r["who"], r["via"], r["action"],
                        str(r["count"]), flt, shown)))
    return 0


def cmd_report(args: argparse.Namespace, open_store: OpenStore) -> int:
    """The reconciliation of one UTC day."""
    from buffer.ledger import day_bounds, day_of
    from gateway.ops.api import reconciliation_csv

    day = args.day or day_of(time.time())
    try:
        day_bounds(day)
    except ValueError:
        _err(f"error: --day must be YYYY-MM-DD, got {day!r}")
        return 2
    routes = _routes(args)
    store = open_store(args)
    try:
        doc = store.reconciliation(day, routes)
    finally:
        store.close()
    if args.format == "json":
        _out(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(reconciliation_csv(doc))
    return 0


def _routes(args: argparse.Namespace) -> dict[str, frozenset[str] | None] | None:
    """Each configured sink's routes (only with ``--config``)."""
    if not getattr(args, "config", None):
        return None
    from gateway.config import load_config

    cfg = load_config(args.config)
    return {s.id: frozenset(s.routes) if s.routes is not None else None for s in cfg.sinks}


def cmd_events_tail(args: argparse.Namespace, open_store: OpenStore) -> int:
    """Show the newest stored events, then (``--follow``) each one as it is stored."""
    store = open_store(args)
    filters = {"device": args.device, "type": args.type, "container": args.container}
    try:
        rows, last = store.stored_events(after=0, limit=args.lines, newest=True, **filters)
        for r in rows:
            _show_event(r, args.json)
        while args.follow:
            sys.stdout.flush()
            time.sleep(args.interval)
            rows, last = store.stored_events(after=last, **filters)
            for r in rows:
                _show_event(r, args.json)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


def _show_event(r: tuple[Any, ...], as_json: bool) -> None:
    seq, created, type_, device, body = r
    if as_json:
        _out(body.decode("utf-8", "replace"))
        return
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    data = doc.get("data") if isinstance(doc, dict) else None
    shown = json.dumps(data, separators=(",", ":"), ensure_ascii=False) if data else ""
    _out(f"{seq}\t{utc(created)}\t{type_}\t{device}\t{shown}")


def add_store_commands(ssub: Any, store_args: StoreArgs, open_store: OpenStore) -> None:
    """``store dead-letters|replay|discard|audit``."""
    dl = ssub.add_parser("dead-letters", help="list dead letters (header, time, container, "
                                              "category, reason)")
    store_args(dl)
    add_filter_args(dl)
    dl.add_argument("--limit", type=int, default=100, help="most dead letters listed (100)")
    dl.add_argument("--after", type=int, default=0, help="list ids greater than this")
    dl.add_argument("--json", action="store_true", help="one JSON object per line, body included")
    dl.set_defaults(func=partial(cmd_dead_letters, open_store=open_store))
    for action, text in (("replay", "re-send sink dead letters to the sink that rejected them"),
                         ("discard", "take dead letters out of the queue (kept in the archive "
                                     "for store.discarded_retention)")):
        sp = ssub.add_parser(action, help=text)
        store_args(sp)
        sp.add_argument("ids", type=int, nargs="*", help="dead letter ids (or use --all)")
        sp.add_argument("--all", action="store_true",
                        help="every dead letter matching the filters below")
        add_filter_args(sp)
        sp.set_defaults(func=partial(cmd_act, open_store=open_store, action=action))
    au = ssub.add_parser("audit", help="who replayed or discarded what, newest first")
    store_args(au)
    au.add_argument("--limit", type=int, default=50, help="most entries shown (50)")
    au.add_argument("--json", action="store_true", help="one JSON object per line")
    au.set_defaults(func=partial(cmd_audit, open_store=open_store))


def add_commands(sub: Any, store_args: StoreArgs, open_store: OpenStore) -> None:
    """``report`` and ``events tail``."""
    rp = sub.add_parser("report", help="reconciliation of one day: accepted, delivered, "
                                       "rejected, replayed, discarded, pending per type and sink")
    store_args(rp)
    rp.add_argument("--day", help="UTC day YYYY-MM-DD (default: today)")
    rp.add_argument("--format", choices=["csv", "json"], default="csv",
                    help="output format (default csv)")
    rp.set_defaults(func=partial(cmd_report, open_store=open_store))
    ev = sub.add_parser("events", help="look at the events in the store")
    esub = ev.add_subparsers(dest="events_command", required=True)
    tail = esub.add_parser("tail", help="the newest stored events; --follow for new ones")
    store_args(tail)
    tail.add_argument("--device", help="only events of this device")
    tail.add_argument("--type", help="only events of this type (pick, scan, move, ...)")
    tail.add_argument("--container", help="only events naming this container or code")
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many to show first (20)")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="keep showing events as they are stored (Ctrl-C stops)")
    tail.add_argument("--interval", type=float, default=0.5, help="seconds between looks (0.5)")
    tail.add_argument("--json", action="store_true", help="the events as JSON lines")
    tail.set_defaults(func=partial(cmd_events_tail, open_store=open_store))
