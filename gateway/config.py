"""Site configuration: one TOML file, validated by pydantic with ``extra="forbid"``.

The models are the plugin registry: ``driver`` picks a device's protocol and
``type`` picks a sink's implementation. ``load_config`` returns a validated,
frozen model or raises ``ConfigError`` whose lines each name the file, the
key path and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.modbus.config import ModbusDevice
from drivers.mqtt.config import MqttDevice, ScannerFields
from drivers.opcua.config import OpcuaDevice
from drivers.vda5050.config import Vda5050Device
from gateway.core.codes import CodeRule
from gateway.core.config import (
    ByteSize,
    Duration,
    Identifier,
    Model,
    PositiveDuration,
    SinkModel,
    is_loopback_host,
    no_inline_secrets,
    parse_bytes,
    parse_duration,
    read_secret,
    resolve_path,
)
from gateway.core.events import EVENT_TYPES
from gateway.core.suggest import nearest_key
from gateway.core.tls import ClientTls
from gateway.mapping.check import mapping_problems
from gateway.mapping.stations import station_problems
from gateway.transport.config import BrokerConfig

if TYPE_CHECKING:
    from gateway.core.protocols import Sink as SinkProtocol
    from gateway.core.protocols import SinkContext

__all__ = [
    "BrokerConfig", "ByteSize", "ConfigError", "Device", "Duration", "GatewayConfig",
    "HttpSinkConfig", "Identifier", "ModbusDevice", "MqttDevice", "MqttSinkConfig",
    "OpcuaDevice", "PositiveDuration", "ScannerFields", "Vda5050Device", "load_config",
    "parse_bytes", "parse_config", "parse_duration", "read_secret",
]


class SiteConfig(Model):
    """The site this gateway serves."""

    id: Identifier
    #: What each code is, by its shape (``[[site.codes]]``: gateway.core.codes).
    codes: list[CodeRule] = []


def _size_or_zero(value: object) -> int:
    """A size like ``ByteSize``, where ``0`` means "off"."""
    if value == 0 and not isinstance(value, bool):
        return 0
    if isinstance(value, str) and value.strip() == "0":
        return 0
    return parse_bytes(value)


#: A size that may also be ``0`` (the feature is off).
ByteSizeOrZero = Annotated[int, BeforeValidator(_size_or_zero)]


class StoreConfig(Model):
    """The SQLite store-and-forward buffer."""

    path: Path
    max_bytes: ByteSize = 2 * 1024**3
    synchronous: Literal["NORMAL", "FULL", "EXTRA"] = "FULL"
    group_commit: Duration = 0.002
    group_commit_max: Annotated[int, Field(ge=1, le=100_000)] = 2000
    retention: Duration = 0.0
    #: Dead letters' own budget; ``None``: an eighth of ``max_bytes``.
    dead_letter_max_bytes: ByteSize | None = None
    #: Bytes of an oversized ingest payload kept in its dead letter.
    dead_letter_payload_bytes: Annotated[int, Field(ge=256, le=16 * 1024**2)] = 4096
    #: Below this much free disk the store admits nothing (0: off).
    min_free_bytes: ByteSizeOrZero = 64 * 1024**2
    #: Size of ``<path>.reserve``, kept free for cursor moves (0: no reserve).
    reserve_bytes: ByteSizeOrZero = 8 * 1024**2
    #: How long discarded dead letters are kept in the archive before deletion.
    discarded_retention: PositiveDuration = 30 * 86400.0


#: The device plugin registry: ``driver`` picks the model (and the driver).
Device = Annotated[
    MqttDevice | ModbusDevice | OpcuaDevice | Vda5050Device, Field(discriminator="driver")
]
DEVICE_TAGS = ("mqtt", "modbus", "opcua", "vda5050")
SINK_TAGS = ("http", "mqtt")


class _SinkBase(SinkModel):
    id: Identifier
    routes: list[str] | None = None
    batch_max: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            unknown = [r for r in v if r not in EVENT_TYPES]
            if unknown:
                raise ValueError(
                    f"unknown event type(s) {unknown}; expected some of {sorted(EVENT_TYPES)}"
                )
        return v


class HttpSinkConfig(_SinkBase, ClientTls):
    """A WMS/ERP ingest endpoint speaking the upstream HTTP contract.

    For an ``https://`` url the TLS keys of ``ClientTls`` apply (per-sink CA,
    client certificate, version floor).
    """

    type: Literal["http"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    token_file: Path | None = None
    timeout: PositiveDuration = 10.0
    max_body_bytes: ByteSize = 4 * 1024**2
    backoff_initial: PositiveDuration = 0.5
    backoff_max: PositiveDuration = 60.0
    retry_after_max: PositiveDuration = 900.0
    auth_retry: PositiveDuration = 30.0
    max_response_bytes: Annotated[ByteSize, Field(gt=0)] = 1024**2
    pause_after_failures: Annotated[int, Field(ge=1)] = 5
    paused_retry: PositiveDuration = 60.0
    follow_redirects: bool = False
    headers: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return no_inline_secrets(data, ("token",))

    @model_validator(mode="after")
    def _tls_needs_https(self) -> HttpSinkConfig:
        stray = self.tls_keys_set()
        if stray and not self.url.startswith("https://"):
            raise ValueError(f"{', '.join(stray)} set but url is not https://")
        return self

    def build(self, ctx: SinkContext) -> SinkProtocol:
        """An ``HttpSink`` (imports aiohttp)."""
        from gateway.sinks.http import HttpSink

        return HttpSink(self)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        reserved = {"content-type", "idempotency-key", "authorization", "content-length"}
        clash = sorted(k for k in v if k.lower() in reserved)
        if clash:
            raise ValueError(
                f"{clash} are set by the gateway and may not be overridden "
                "(the bearer token comes from token_file)"
            )
        return v


class MqttSinkConfig(_SinkBase):
    """MQTT subscribers: events published at QoS 1 to ``<prefix>/<site>/events/<type>``."""

    type: Literal["mqtt"]
    broker: Identifier
    prefix: str = "wh"
    window: Annotated[int, Field(ge=1, le=65535)] = 100
    retain: bool = False
    #: Birth, last will and device status topics (docs/mqtt.md#presence).
    presence: bool = True

    def build(self, ctx: SinkContext) -> SinkProtocol:
        """An ``MqttSink`` on its broker (imports paho)."""
        from gateway.sinks.mqtt import MqttSink

        return MqttSink(self, ctx.brokers[self.broker], ctx.site, started_at=ctx.started_at,
                        devices=ctx.devices)


#: One ``[[sinks]]`` table (not to be confused with ``gateway.core.protocols.Sink``,
#: the running sink built from it).
SinkConfig = Annotated[HttpSinkConfig | MqttSinkConfig, Field(discriminator="type")]


class StatusConfig(Model):
    """The local status page and operations API."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    token_file: Path | None = None
    #: Serve HTTPS with this certificate (PEM, may hold the chain) and key.
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password_file: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> StatusConfig:
        problems = []
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("cert_file and key_file go together (HTTPS); set both or neither")
        if self.key_password_file is not None and self.key_file is None:
            problems.append("key_password_file is set but key_file is not")
        if self.enabled and self.token_file is None and not is_loopback_host(self.host):
            problems.append(
                f"host {self.host!r} is not a loopback address: beyond this machine the "
                "status server needs token_file (dead letter bodies and actions are behind "
                "it); set one, or listen on 127.0.0.1")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class LogConfig(Model):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class GatewayConfig(Model):
    """The whole site configuration."""

    site: SiteConfig
    store: StoreConfig
    brokers: list[BrokerConfig] = []
    devices: list[Device] = []
    sinks: list[SinkConfig] = []
    status: StatusConfig = StatusConfig()
    log: LogConfig = LogConfig()
    shutdown_timeout: Duration = 10.0

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        problems = _reference_problems(
            {"brokers": [b.id for b in self.brokers], "devices": [d.id for d in self.devices],
             "sinks": [s.id for s in self.sinks]},
            list(enumerate(self.devices)), list(enumerate(self.sinks)))
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _reference_problems(ids: dict[str, list[object]], devices: list[tuple[int, Any]],
                        sinks: list[tuple[int, Any]]) -> list[str]:
    """Problems between sections: duplicate ids, unknown brokers, mapping source keys.

    ``ids`` holds each section's ids by index (``None`` where an item has none);
    ``devices`` and ``sinks`` the items that parsed, with their index. The same
    pass runs on a whole valid config and on the parts of an invalid one.
    """
    problems: list[str] = []
    for name, items in ids.items():
        seen: dict[object, int] = {}
        for i, item_id in enumerate(items):
            if item_id is None or not isinstance(item_id, str):
                continue
            if item_id in seen:
                problems.append(
                    f"{name}[{i}].id: duplicate id {item_id!r} (also {name}[{seen[item_id]}])"
                )
            seen.setdefault(item_id, i)
    brokers = {b for b in ids.get("brokers", []) if isinstance(b, str)}
    for i, dev in devices:
        if isinstance(dev, MqttDevice | Vda5050Device) and dev.broker not in brokers:
            problems.append(
                f"devices[{i}].broker: no broker with id {dev.broker!r}; "
                f"defined: {sorted(brokers) or 'none'}"
            )
    for i, sink in sinks:
        if isinstance(sink, MqttSinkConfig) and sink.broker not in brokers:
            problems.append(
                f"sinks[{i}].broker: no broker with id {sink.broker!r}; "
                f"defined: {sorted(brokers) or 'none'}"
            )
    for i, dev in devices:
        problems.extend(mapping_problems(dev, f"devices[{i}]"))
        problems.extend(station_problems(dev, f"devices[{i}]"))
    return problems


def _partial_reference_problems(raw: dict[str, Any]) -> list[str]:
    """The cross-reference pass over the items of an invalid config that parse on their own.

    Field errors stop pydantic before the whole-config check; this runs that
    check anyway, so one ``check`` lists both kinds of problem.
    """
    if not isinstance(raw, dict):
        return []

    def section(name: str) -> list[Any]:
        items = raw.get(name)
        return items if isinstance(items, list) else []

    def parsed(name: str, adapter: TypeAdapter[Any]) -> list[tuple[int, Any]]:
        out = []
        for i, item in enumerate(section(name)):
            try:
                out.append((i, adapter.validate_python(item)))
            except ValidationError:
                continue
        return out

    ids = {name: [item.get("id") if isinstance(item, dict) else None for item in section(name)]
           for name in ("brokers", "devices", "sinks")}
    return _reference_problems(ids, parsed("devices", _DEVICE_ADAPTER),
                               parsed("sinks", _SINK_ADAPTER))


_DEVICE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Device)
_SINK_ADAPTER: TypeAdapter[Any] = TypeAdapter(SinkConfig)


class ConfigError(Exception):
    """A configuration file is unusable; ``problems`` lists each issue."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


class MissingFilesError(ConfigError):
    """The config is valid but names certificate or CA files that are not there.

    Raised only when these are the config's sole problems (otherwise they are
    listed with the others in a plain ``ConfigError``).
    """


def _file_problem(path: Path, where: str) -> str | None:
    """Why a certificate/key/CA file named in the config cannot be used, or ``None``."""
    if not path.exists():
        return f"{where}: file {str(path)!r} does not exist"
    if not path.is_file():
        return f"{where}: {str(path)!r} is not a file"
    if not os.access(path, os.R_OK):
        return f"{where}: file {str(path)!r} cannot be read by this user (uid {os.getuid()})"
    return None


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 2 and (
            (loc[0] == "sinks" and part in SINK_TAGS)
            or (loc[0] == "devices" and part in DEVICE_TAGS)
        ):
            continue  # the discriminator tag pydantic puts in the path
        elif part.startswith("function-") or part.endswith("]"):
            continue
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _format(err: ValidationError) -> list[str]:
    problems: list[str] = []
    for e in err.errors(include_url=False):
        where = _loc(tuple(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not part of the configuration schema)"
            hint = nearest_key(GatewayConfig, tuple(e["loc"]))
            if hint is not None:
                msg += f"; did you mean {hint!r}?"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = e.get("ctx", {})
            key = ctx.get("discriminator", "").strip("'")
            where = f"{where}.{key}"
            tags = DEVICE_TAGS if e["loc"][0] == "devices" else SINK_TAGS
            expected = ", ".join(repr(t) for t in tags)
            if e["type"] == "union_tag_not_found":
                msg = f"required key is missing; expected one of {expected}"
            else:
                msg = f"unknown {key} {ctx.get('tag')!r}; expected one of {expected}"
        elif e["type"] != "value_error" and "input" in e and not isinstance(
            e["input"], dict | list
        ):
            msg += f" (got {e['input']!r})"
        if where == "(top level)" and e["type"] == "value_error":
            problems.extend(msg.splitlines())
        else:
            problems.append(f"{where}: {msg}")
    return problems


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read, validate and resolve a config file; raise ``ConfigError`` on any problem."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, ["file not found"]) from None
    except OSError as err:
        raise ConfigError(file, [f"cannot read file: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(file, ["file is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(file, [f"TOML syntax error: {err}"]) from None
    return parse_config(raw, file)


def parse_config(raw: dict[str, Any], file: Path) -> GatewayConfig:
    """Validate an already-parsed TOML document (``file`` is used in messages)."""
    try:
        cfg = GatewayConfig.model_validate(raw)
    except ValidationError as err:
        found = _format(err)
        found += [p for p in _partial_reference_problems(raw) if p not in found]
        raise ConfigError(file, found) from None
    base = file.parent.resolve()
    problems: list[str] = []
    missing: list[str] = []

    def existing(path: Path | None, where: str) -> Path | None:
        resolved = resolve_path(base, path)
        problem = None if resolved is None else _file_problem(resolved, where)
        if problem is not None:
            missing.append(problem)
        return resolved

    def secret(path: Path | None, where: str, what: str) -> Path | None:
        resolved = resolve_path(base, path)
        if resolved is not None:
            try:
                read_secret(resolved, what)
            except ValueError as err:
                problems.append(f"{where}: {err}")
        return resolved

    sinks = [_resolve_files(sink, f"sinks[{i}]", base, secret, existing)
             for i, sink in enumerate(cfg.sinks)]
    brokers = [_resolve_files(broker, f"brokers[{i}]", base, secret, existing)
               for i, broker in enumerate(cfg.brokers)]
    devices = [_resolve_files(dev, f"devices[{i}]", base, secret, existing)
               for i, dev in enumerate(cfg.devices)]
    status = _resolve_files(cfg.status, "status", base, secret, existing)
    if problems:
        raise ConfigError(file, problems + missing)
    if missing:
        raise MissingFilesError(file, missing)
    store_path = resolve_path(base, cfg.store.path)
    return cfg.model_copy(
        update={
            "sinks": sinks,
            "brokers": brokers,
            "devices": devices,
            "store": cfg.store.model_copy(update={"path": store_path}),
            "status": status,
        }
    )


#: Fields holding a secret (read and checked as one at load time), and what each is.
_SECRET_FILES = {"password_file": "password", "token_file": "token",
                 "key_password_file": "key password"}


def _resolve_files(
    model: Any, where: str, base: Path,
    secret: Callable[[Path | None, str, str], Path | None],
    existing: Callable[[Path | None, str], Path | None],
) -> Any:
    """Resolve every ``*_file`` path of a broker, device, sink or the status table
    against the config's folder.

    Secrets must be readable and non-empty; other files (certificates, keys)
    must exist. A ``*_folder`` (a trust folder) is only resolved: the gateway
    creates it. Each problem names the key path.
    """
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name.endswith("_folder") and isinstance(value, Path):
            updates[name] = resolve_path(base, value)
            continue
        if not name.endswith("_file") or not isinstance(value, Path):
            continue
        what = _SECRET_FILES.get(name)
        if what is not None:
            if where == "status" and name == "token_file":
                what = "status token"
            updates[name] = secret(value, f"{where}.{name}", what)
            continue
        updates[name] = existing(value, f"{where}.{name}")
    return model.model_copy(update=updates) if updates else model
