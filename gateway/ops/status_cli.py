"""``warehouse-gateway status``: the status page's picture in the terminal.

Asks the running daemon (``/api/status`` on ``status.host``:``status.port``);
when nothing answers, reads the store file instead and says so (devices and
sinks are only known to a running daemon).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from gateway.ops.commands import OpenStore, utc


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def status_url(host: str, port: int) -> str:
    """Where the daemon's status API answers, seen from this machine."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/api/status"


def fetch(url: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The daemon's status document, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            doc = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _mib(n: Any) -> str:
    return f"{(n or 0) / 1024**2:.1f} MiB"


def _duration(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def render(doc: dict[str, Any], source: str) -> list[str]:
    """The status document as lines of text."""
    lines = [f"site {doc.get('site')}: {'READY' if doc.get('ready') else 'NOT READY'}, "
             f"up {_duration(doc.get('uptime_s') or 0)}, pid {doc.get('pid')}  ({source})"]
    alerts = doc.get("alerts") or []
    lines.append(f"alerts: {len(alerts) or 'none'}")
    for a in alerts:
        lines.append(f"  ! {_alert(a)}")
    sinks = doc.get("sinks") or {}
    if sinks:
        lines.append("sinks:")
        for sid, s in sinks.items():
            last = s.get("last_success_at") or s.get("last_batch_at")
            line = (f"  {sid:<12} {s.get('type', ''):<5} {s.get('state', '?'):<10} "
                    f"backlog {s.get('backlog_events')}  delivered "
                    f"{s.get('events_delivered', s.get('delivered'))}  dead letters "
                    f"{s.get('dead_letters', 0)}  last success {utc(last)}")
            if s.get("oldest_undelivered_age_s") is not None:
                line += f"  oldest waiting {_duration(s['oldest_undelivered_age_s'])}"
            if s.get("down_since") is not None:
                line += f"  down since {utc(s['down_since'])}"
            if s.get("last_error"):
                line += f"  last error: {s['last_error']}"
            lines.append(line)
    devices = doc.get("devices") or {}
    if devices:
        lines.append("devices:")
        for did, d in devices.items():
            state = d.get("state") or ("connected" if d.get("connected") else "disconnected")
            flag = "  REJECTING ALL" if d.get("rejecting_all") else ""
            lines.append(f"  {did:<14} {state:<13} messages {_count(d.get('messages'))}"
                         f"  ingest errors {_count(d.get('ingest_errors'))}{flag}")
    st = doc.get("store") or {}
    if st:
        dl = st.get("dead_letters") or {}
        lines.append(f"store: {st.get('events', 0)} events, {_mib(st.get('used_bytes'))} of "
                     f"{_mib(st.get('max_bytes'))}; dead letters {dl.get('sink', 0)} sink, "
                     f"{dl.get('ingest', 0)} ingest; backlog {st.get('backlog', {})}")
    return lines


def _alert(a: Any) -> str:
    """One alert: a plain string, or the alert model's object (severity, message,
    since, what to do)."""
    if not isinstance(a, dict):
        return str(a)
    text = f"[{a.get('severity', '?')}] {a.get('message') or a.get('text') or json.dumps(a)}"
    if a.get("since"):
        text += f" (since {utc(a['since'])})"
    if a.get("action"):
        text += f" - {a['action']}"
    return text


def _count(v: Any) -> int:
    if isinstance(v, dict):
        return sum(n for n in v.values() if isinstance(n, int))
    return int(v) if isinstance(v, int) else 0


def cmd_status(args: argparse.Namespace, open_store: OpenStore) -> int:
    """Print the daemon's status (or the store's, when the daemon does not answer)."""
    from gateway.ops.storefile import load_or_exit_code

    url = args.url
    if url is None and args.config:
        cfg = load_or_exit_code(args.config)
        if isinstance(cfg, int):
            return cfg
        url = status_url(cfg.status.host, cfg.status.port)
    doc = fetch(url) if url else None
    if doc is not None:
        if args.json:
            _out(json.dumps(doc, indent=2))
        else:
            for line in render(doc, f"from {url}"):
                _out(line)
        return 0
    if not (args.config or args.db):
        sys.stderr.write(f"error: no gateway answers at {url}; give --config or --db to read "
                         "the store file\n")
        return 1
    store = open_store(args)
    try:
        stats = store.stats()
    finally:
        store.close()
    doc = {"site": "?", "ready": False, "uptime_s": 0, "pid": None, "alerts": [],
           "store": stats}
    if args.json:
        _out(json.dumps({"running": False, "store": stats}, indent=2))
        return 3
    _out(f"gateway not running (no answer from {url or 'the status API'}); from the store "
         f"file {stats['path']}:")
    for line in render(doc, "store file")[2:]:
        _out(line)
    _out(f"cursors: {stats['cursors']}")
    return 3


def add_status_command(sub: Any, open_store: OpenStore) -> None:
    """``status``."""
    from functools import partial

    sp = sub.add_parser("status", help="the gateway's status in the terminal (from the running "
                                       "daemon, or from the store file when it is not running)")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="site config file (its status address and store are used)")
    g.add_argument("--db", help="store file path (when the daemon is not running)")
    g.add_argument("--url", help="the daemon's /api/status URL")
    sp.add_argument("--json", action="store_true", help="the status document as JSON")
    sp.set_defaults(func=partial(cmd_status, open_store=open_store))
