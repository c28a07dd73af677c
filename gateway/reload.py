"""``systemctl reload`` (SIGHUP): re-read the config, apply what can be applied live.

The new file is read and validated exactly as at start-up (``load_config``:
every problem, secret files readable). A config with problems is rejected:
each problem is logged (``config_reload_rejected``) and the running config
stays in force. A valid one is compared key by key with the config the
process started with:

* applied at once: ``log.level``; for each ``http`` sink the keys in
  ``HTTP_SINK_LIVE`` (its token file, headers, backoff and pause settings,
  body and response limits, redirects);
* everything else (devices, brokers, the store, sink urls, TLS, routes,
  ``batch_max``, ``timeout``, the status server, MQTT sinks, adding or
  removing a sink) needs a restart: one line (``config_reload_needs_restart``)
  names those keys, and they go into the service status.

Token *contents* never need a reload: an HTTP sink re-reads its token file
when the file changes, the status server reads its token file at every
request. The store, the committer and the forwarders are not touched by a
reload, so nothing accepted is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway.config import ConfigError, GatewayConfig, HttpSinkConfig, load_config
from gateway.logs import set_level

log = structlog.get_logger(__name__)

#: Keys of an ``http`` sink a reload applies to the running sink.
HTTP_SINK_LIVE = frozenset({
    "token_file", "headers", "backoff_initial", "backoff_max", "retry_after_max",
    "auth_retry", "max_response_bytes", "max_body_bytes", "pause_after_failures",
    "paused_retry", "follow_redirects",
})
#: Top-level keys a reload applies.
LIVE = frozenset({"log.level"})


def changed_keys(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted key paths whose values differ (lists of tables are matched by ``id``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                out.append(path)
            else:
                out.extend(changed_keys(old[key], new[key], path))
        return out
    if (isinstance(old, list) and isinstance(new, list) and
            all(isinstance(x, dict) and "id" in x for x in [*old, *new])):
        olds = {x["id"]: x for x in old}
        news = {x["id"]: x for x in new}
        out = []
        for key in [*olds, *(k for k in news if k not in olds)]:
            path = f"{where}[{key}]"
            if key not in olds or key not in news:
                out.append(path)
            else:
                out.extend(changed_keys(olds[key], news[key], path))
        return out
    return [] if old == new else [where]


@dataclass
class ReloadResult:
    """What a reload did."""

    ok: bool
    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def status(self) -> str:
        """One line for ``STATUS=``."""
        if not self.ok:
            return (f"config reload REJECTED ({len(self.problems)} problem(s), see the log); "
                    "running the previous config")
        if self.needs_restart:
            return "restart needed to apply: " + ", ".join(self.needs_restart)
        return ""


def plan(running: GatewayConfig, new: GatewayConfig) -> tuple[list[str], list[str]]:
    """(keys applied live, keys that need a restart) from ``running`` to ``new``."""
    applied: list[str] = []
    restart: list[str] = []
    for key in changed_keys(running.model_dump(mode="json"), new.model_dump(mode="json")):
        head, _, rest = key.partition("].")
        if key in LIVE:
            applied.append(key)
        elif head.startswith("sinks[") and rest:
            sink_id = head.removeprefix("sinks[")
            old_sink = next(s for s in running.sinks if s.id == sink_id)
            if isinstance(old_sink, HttpSinkConfig) and rest.split(".")[0] in HTTP_SINK_LIVE:
                applied.append(key)
            else:
                restart.append(key)
        else:
            restart.append(key)
    # A sink that waits for a restart keeps all of its old table until then: a new token
    # or header must not go to the old URL.
    held = held_sinks(restart)
    moved = [k for k in applied if _sink_of(k) in held]
    return [k for k in applied if k not in moved], restart + moved


def _sink_of(key: str) -> str | None:
    head, sep, _ = key.partition("]")
    return head.removeprefix("sinks[") if sep and head.startswith("sinks[") else None


def held_sinks(restart: list[str]) -> set[str]:
    """Ids of the sinks with a key that needs a restart."""
    return {sink for k in restart if (sink := _sink_of(k)) is not None}


def reload_config(path: Path, running: GatewayConfig, sinks: list[Any]) -> ReloadResult:
    """Read ``path``, then ``apply`` it (all in the calling thread)."""
    try:
        new = load_config(path)
    except ConfigError as err:
        return rejected(path, err)
    return apply(path, running, new, sinks)


def rejected(path: Path, err: ConfigError) -> ReloadResult:
    """Log a new config's problems; the running one stays."""
    log.error("config_reload_rejected", path=str(path), problems=err.problems,
              action="the previous config keeps running")
    return ReloadResult(ok=False, problems=err.problems)


def apply(path: Path, running: GatewayConfig, new: GatewayConfig, sinks: list[Any]
          ) -> ReloadResult:
    """Apply ``new``'s live keys to ``sinks`` and the log level (on the event loop).

    ``running`` is the config the process started with (what needs a restart
    is measured against it, so it is reported until the restart).
    """
    applied, restart = plan(running, new)
    set_level(new.log.level)
    by_id = {s.id: s for s in new.sinks}
    held = held_sinks(restart)
    for sink in sinks:
        cfg = by_id.get(sink.id)
        if not isinstance(cfg, HttpSinkConfig) or not hasattr(sink, "reconfigure") \
                or sink.id in held:
            continue
        # Only the live keys of the new table; the rest stays as it started.
        live = {k: getattr(cfg, k) for k in HTTP_SINK_LIVE}
        sink.reconfigure(sink.cfg.model_copy(update=live))
    if restart:
        log.warning("config_reload_needs_restart", path=str(path), keys=restart,
                    action="systemctl restart warehouse-gateway to apply them")
    log.info("config_reloaded", path=str(path), applied=applied, needs_restart=restart)
    return ReloadResult(ok=True, applied=applied, needs_restart=restart)
