"""Building blocks shared by every config model: sizes, durations, ids, secrets.

Device and sink config models live next to their implementation (e.g.
``drivers/modbus/config.py``) and import only from here, so reading a config
never imports a protocol library.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from gateway.core.protocols import Driver, DriverContext, Sink, SinkContext

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


class Model(BaseModel):
    """Base of every config model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: Presets that name a built-in recognizer (their drivers' usual signals feed it).
STAGE_PRESETS = frozenset({"conveyor", "vda5050"})


class DeviceModel(Model):
    """Base of a device's config model: the model is the plugin that builds its driver.

    A subclass sets ``KIND`` (its ``driver`` key) and ``ROLES`` (the roles its
    driver can feed: each has a recognizer in ``gateway.ingest.RECOGNIZERS``),
    and implements ``build``. Devices with the same ``group()`` share one
    driver (MQTT devices on one broker share its connection).
    """

    KIND: ClassVar[str] = ""
    ROLES: ClassVar[tuple[str, ...]] = ()

    id: str
    role: str
    #: A named mapping shipped with the gateway (docs/mapping.md), e.g. ``"sorter"``.
    preset: str | None = None
    #: The device's own declarative mapping (``[devices.mapping]``): validated by
    #: ``gateway.config`` into a ``gateway.mapping.config.MappingConfig``.
    mapping: Any = None

    @property
    def generic_signals(self) -> bool:
        """Whether the driver delivers generic signals (any field, any shape) for a mapping.

        False for the built-in recognizers (no mapping, or a preset that is one:
        ``STAGE_PRESETS``), which read the signals they always did.
        """
        return self.mapping is not None or (
            self.preset is not None and self.preset not in STAGE_PRESETS)

    @field_validator("role", check_fields=False)
    @classmethod
    def _known_role(cls, v: str) -> str:
        if v not in cls.ROLES:
            expected = ", ".join(repr(r) for r in cls.ROLES)
            raise ValueError(f"role {v!r} is not one the {cls.KIND} driver can feed; "
                             f"expected {'one of ' if len(cls.ROLES) > 1 else ''}{expected}")
        return v

    def group(self) -> str:
        """Devices of one kind with the same group are served by one driver."""
        return self.id

    @classmethod
    def build(cls, ctx: DriverContext[Any]) -> Driver:
        """The running driver for ``ctx.devices`` (imports the protocol library)."""
        raise NotImplementedError(f"{cls.__name__} does not build a driver")


class SinkModel(Model):
    """Base of a sink's config model: the model builds its running sink."""

    id: str

    def build(self, ctx: SinkContext) -> Sink:
        """The running sink (imports the protocol library)."""
        raise NotImplementedError(f"{type(self).__name__} does not build a sink")


def no_inline_secrets(data: Any, keys: tuple[str, ...]) -> Any:
    """Reject secrets written inline (use a ``*_file`` path instead)."""
    if isinstance(data, dict):
        for key in keys:
            if key in data:
                raise ValueError(
                    f"'{key}' may not be written in the config file; put the secret in a "
                    f"file readable only by the gateway and set '{key}_file' to its path"
                )
    return data


def read_secret(path: Path, what: str) -> str:
    """Read a secret from a file (a systemd credential or a 0600 file)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ValueError(f"cannot read {what} file {str(path)!r}: {err.strerror}") from None
    if not text:
        raise ValueError(f"{what} file {str(path)!r} is empty")
    return text


#: The unit loads the credentials folder as ``LoadCredential=credentials:<folder>``:
#: systemd names each file's credential ``credentials_<file name>``.
CREDENTIAL_PREFIX = "credentials_"


def resolve_path(base: Path, p: Path | None) -> Path | None:
    """Where a configured file is: absolute as given; a relative path is looked up
    first in systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``: as named,
    then as ``credentials_<name>``, a file of the credentials folder), then next
    to the config file (``base``)."""
    if p is None:
        return None
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not p.is_absolute() and creds:
        for name in (p, Path(CREDENTIAL_PREFIX + str(p))):
            if (Path(creds) / name).exists():
                return Path(creds) / name
    return p if p.is_absolute() else (base / p)


def is_loopback_host(host: str) -> bool:
    """True when a listen address only accepts connections from this machine.

    ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``, also
    IPv4-mapped) are; wildcards (``0.0.0.0``, ``::``, empty), LAN addresses and
    any other host name (it may resolve to anything) are not.
    """
    name = host.strip().rstrip(".").lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback
