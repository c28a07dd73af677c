"""Site configuration: one TOML file, validated by pydantic with ``extra="forbid"``.

The models are the plugin registry: ``driver`` picks a device's protocol and
``type`` picks a sink's implementation. ``load_config`` returns a validated,
frozen model or raises ``ConfigError`` whose lines each name the file, the
key path and what was expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.events import EVENT_TYPES

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DUR_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


def parse_bytes(value: object) -> int:
    """Parse ``2 GiB``, ``500 MB``, ``1048576`` into bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 2 GiB or 500 MB")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be positive")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _UNITS:
            n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
            if n > 0:
                return n
    raise ValueError(f"expected a size such as 2 GiB or 500 MB, got {value!r}")


def parse_duration(value: object) -> float:
    """Parse ``250ms``, ``5s``, ``2m``, ``1h``, ``1d`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s or 250ms")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration may not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DUR_RE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return float(m.group(1)) * _DUR_UNITS[unit]
    raise ValueError(f"expected a duration such as 5s, 250ms or 2m, got {value!r}")


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
#: A duration that must be above zero (a zero backoff or timeout would spin).
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Identifier = Annotated[str, Field(pattern=_ID_RE)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_inline_secrets(data: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(data, dict):
        for key in keys:
            if key in data:
                raise ValueError(
                    f"'{key}' may not be written in the config file; put the secret in a "
                    f"file readable only by the gateway and set '{key}_file' to its path"
                )
    return data


class SiteConfig(_Model):
    """The site this gateway serves."""

    id: Identifier


class StoreConfig(_Model):
    """The SQLite store-and-forward buffer."""

    path: Path
    max_bytes: ByteSize = 2 * 1024**3
    synchronous: Literal["NORMAL", "FULL", "EXTRA"] = "FULL"
    group_commit: Duration = 0.002
    group_commit_max: Annotated[int, Field(ge=1, le=100_000)] = 2000
    retention: Duration = 0.0


class BrokerConfig(_Model):
    """An MQTT broker the gateway connects to (sources and sinks share it)."""

    id: Identifier
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry: Duration = 86400.0
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 1000
    tls: bool = False
    ca_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return _no_inline_secrets(data, ("password",))

    @model_validator(mode="after")
    def _password_needs_user(self) -> BrokerConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not; set both or neither")
        return self


class ScannerFields(_Model):
    """Where a scanner's JSON payload keeps each field (dotted paths allowed)."""

    code: str = "code"
    read_id: str | None = "read_id"
    timestamp: str | None = "timestamp"
    symbology: str | None = "symbology"


class MqttDevice(_Model):
    """A device read over MQTT (today: barcode scanners publishing JSON reads)."""

    id: Identifier
    driver: Literal["mqtt"]
    role: Literal["scanner"] = "scanner"
    broker: Identifier
    topic: str
    fields: ScannerFields = ScannerFields()
    debounce: Duration = 0.5
    max_payload_bytes: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)] = 65536
    no_read_codes: list[str] = ["NOREAD", ""]
    location: str | None = None

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or "#" in v[:-1] or any(
            ("+" in part or "#" in part) and len(part) > 1 for part in v.split("/")
        ):
            raise ValueError(f"not a valid MQTT topic filter: {v!r}")
        return v


Device = MqttDevice


class _SinkBase(_Model):
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


class HttpSinkConfig(_SinkBase):
    """A WMS/ERP ingest endpoint speaking the upstream HTTP contract."""

    type: Literal["http"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    token_file: Path | None = None
    timeout: PositiveDuration = 10.0
    max_body_bytes: ByteSize = 4 * 1024**2
    backoff_initial: PositiveDuration = 0.5
    backoff_max: PositiveDuration = 60.0
    retry_after_max: PositiveDuration = 900.0
    auth_retry: PositiveDuration = 30.0
    headers: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return _no_inline_secrets(data, ("token",))

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


Sink = Annotated[HttpSinkConfig | MqttSinkConfig, Field(discriminator="type")]


class StatusConfig(_Model):
    """The local status page and operations API."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    token_file: Path | None = None


class LogConfig(_Model):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class GatewayConfig(_Model):
    """The whole site configuration."""

    site: SiteConfig
    store: StoreConfig
    brokers: list[BrokerConfig] = []
    devices: list[Device] = []
    sinks: list[Sink] = []
    status: StatusConfig = StatusConfig()
    log: LogConfig = LogConfig()
    shutdown_timeout: Duration = 10.0

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        problems: list[str] = []
        for name, items in (("brokers", self.brokers), ("devices", self.devices),
                            ("sinks", self.sinks)):
            seen: dict[str, int] = {}
            for i, item in enumerate(items):
                if item.id in seen:
                    problems.append(
                        f"{name}[{i}].id: duplicate id {item.id!r} (also {name}[{seen[item.id]}])"
                    )
                seen.setdefault(item.id, i)
        brokers = {b.id for b in self.brokers}
        for i, dev in enumerate(self.devices):
            if dev.broker not in brokers:
                problems.append(
                    f"devices[{i}].broker: no broker with id {dev.broker!r}; "
                    f"defined: {sorted(brokers) or 'none'}"
                )
        for i, sink in enumerate(self.sinks):
            if isinstance(sink, MqttSinkConfig) and sink.broker not in brokers:
                problems.append(
                    f"sinks[{i}].broker: no broker with id {sink.broker!r}; "
                    f"defined: {sorted(brokers) or 'none'}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self


class ConfigError(Exception):
    """A configuration file is unusable; ``problems`` lists each issue."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 2 and loc[0] in ("sinks", "devices") and part in ("http", "mqtt"):
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
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] != "value_error" and "input" in e and not isinstance(
            e["input"], dict | list
        ):
            msg += f" (got {e['input']!r})"
        if where == "(top level)" and e["type"] == "value_error":
            problems.extend(msg.splitlines())
        else:
            problems.append(f"{where}: {msg}")
    return problems


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not p.is_absolute() and creds and (Path(creds) / p).exists():
        return Path(creds) / p
    return p if p.is_absolute() else (base / p)


def read_secret(path: Path, what: str) -> str:
    """Read a secret from a file (a systemd credential or a 0600 file)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ValueError(f"cannot read {what} file {str(path)!r}: {err.strerror}") from None
    if not text:
        raise ValueError(f"{what} file {str(path)!r} is empty")
    return text


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
        raise ConfigError(file, _format(err)) from None
    base = file.parent.resolve()
    problems: list[str] = []

    def secret(path: Path | None, where: str, what: str) -> Path | None:
        resolved = _resolve(base, path)
        if resolved is not None:
            try:
                read_secret(resolved, what)
            except ValueError as err:
                problems.append(f"{where}: {err}")
        return resolved

    sinks: list[Any] = [
        sink.model_copy(update={
            "token_file": secret(sink.token_file, f"sinks[{i}].token_file", "token")})
        if isinstance(sink, HttpSinkConfig) else sink
        for i, sink in enumerate(cfg.sinks)
    ]
    brokers = [
        broker.model_copy(update={
            "password_file": secret(broker.password_file, f"brokers[{i}].password_file",
                                    "password"),
            "ca_file": _resolve(base, broker.ca_file),
        })
        for i, broker in enumerate(cfg.brokers)
    ]
    status_token = secret(cfg.status.token_file, "status.token_file", "status token")
    if problems:
        raise ConfigError(file, problems)
    store_path = _resolve(base, cfg.store.path)
    return cfg.model_copy(
        update={
            "sinks": sinks,
            "brokers": brokers,
            "store": cfg.store.model_copy(update={"path": store_path}),
            "status": cfg.status.model_copy(update={"token_file": status_token}),
        }
    )
