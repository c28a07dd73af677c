"""Config model of an OPC UA device (sorter, induct reader) — ``driver = "opcua"``.

One device is one OPC UA server session. It subscribes to events (by source
node and event type: divert confirms of a sorter, scan events of an AutoID
reader) and to data changes of configured variables (chute-full flags,
machine state, counters). Node ids are written in the OPC UA string form
(``ns=2;s=Sorter``, ``i=2253``) or with a namespace URI instead of an index
(``nsu=urn:example:sorter;s=Sorter``), which survives a server that orders
its namespaces differently after an update.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.core.config import (
    DeviceModel,
    Duration,
    Identifier,
    Model,
    PositiveDuration,
    no_inline_secrets,
)

if TYPE_CHECKING:
    from gateway.core.protocols import Driver, DriverContext

_NODE_ID = re.compile(r"^(?:(?:ns=\d+|nsu=[^;]+);)?(?:i=\d+|s=.+|g=[0-9A-Fa-f-]{36}|b=\S+)$")
#: A node id in OPC UA string form.
NodeIdText = Annotated[str, Field(min_length=3)]


def _check_node_id(value: str) -> str:
    if not _NODE_ID.match(value):
        raise ValueError(
            f"not an OPC UA node id: {value!r}; expected e.g. 'ns=2;s=Sorter', 'i=2253' "
            "or 'nsu=urn:example:sorter;s=Sorter'"
        )
    return value


class OpcuaEvents(Model):
    """One event subscription: events of ``type`` (and subtypes) fired by ``source``."""

    #: What the events mean: ``divert_confirm`` (a sorter's divert confirms) or
    #: ``scan`` (an AutoID optical reader's scan events, OPC 30010 style).
    #: ``event``: any event type, for a device with a mapping or preset (docs/mapping.md).
    kind: Literal["divert_confirm", "scan", "event"]
    #: The signal point a mapping's rules match (``on``); default: ``kind``.
    point: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    source: NodeIdText
    type: NodeIdText
    #: Read the server's event history after every (re)connect, so events fired
    #: while the gateway was away are not lost (the server must historize them).
    history: bool = True
    #: Server-side queue of the monitored item (events waiting for a publish).
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @field_validator("source", "type")
    @classmethod
    def _node_ids(cls, v: str) -> str:
        return _check_node_id(v)


class OpcuaNode(Model):
    """One variable whose data changes become telemetry or device status."""

    node: NodeIdText
    #: The name the value goes by in events (``data.point``), e.g. ``chute_full.CHUTE-01``.
    point: Annotated[str, Field(min_length=1, max_length=128)]
    #: ``status`` values become ``device_status`` events, ``telemetry`` values ``telemetry``.
    kind: Literal["telemetry", "status"] = "telemetry"

    @field_validator("node")
    @classmethod
    def _node_id(cls, v: str) -> str:
        return _check_node_id(v)


class OpcuaDevice(DeviceModel):
    """An OPC UA server read through subscriptions (a sorter and/or its induct reader)."""

    KIND: ClassVar[str] = "opcua"
    ROLES: ClassVar[tuple[str, ...]] = ("sorter", "scanner")


    id: Identifier
    driver: Literal["opcua"]
    role: str = "sorter"
    endpoint: Annotated[str, Field(pattern=r"^opc\.tcp://[^\s/:]+(:\d+)?(/\S*)?$")]
    #: Where the induct is, when the confirm event does not say (``data.from`` of moves).
    induct: str | None = None
    #: Location of a reader, carried on its scan events.
    location: str | None = None
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    #: The gateway's application instance certificate (DER or PEM) and its key.
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    #: The server's certificate; without it, it is taken from the server's endpoint list.
    server_certificate_file: Path | None = None
    #: Must match the URI in the certificate; read from the certificate when not set.
    application_uri: str | None = None
    username: str | None = None
    password_file: Path | None = None
    events: list[OpcuaEvents] = []
    nodes: list[OpcuaNode] = []
    publishing_interval: PositiveDuration = 0.1
    #: Keep-alive after this many empty publishing intervals.
    keepalive_count: Annotated[int, Field(ge=1, le=1000)] = 10
    #: Re-create a subscription that was silent (no notification, no keep-alive)
    #: for this many keep-alive periods.
    watchdog_keepalives: Annotated[int, Field(ge=2, le=100)] = 3
    sampling_interval: Duration = 0.0
    #: Server-side queue of each data-change monitored item.
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 10
    #: Timeout of every request (read, browse, history read, create subscription).
    request_timeout: PositiveDuration = 5.0
    #: Timeout of connecting (TCP, hello, secure channel, session).
    connect_timeout: PositiveDuration = 10.0
    session_timeout: PositiveDuration = 60.0
    backoff_initial: PositiveDuration = 0.5
    backoff_max: PositiveDuration = 30.0
    #: The reconnect backoff starts over only after a session stayed up this
    #: long: a server that fails every session right after accepting it is
    #: retried ever more slowly instead of at ``backoff_initial``.
    backoff_reset_after: Duration = 30.0
    #: First connect after the gateway starts: read event history this far back.
    history_lookback: Duration = 3600.0
    #: Events per history read request (continuation points fetch the rest).
    history_page: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return no_inline_secrets(data, ("password",))

    @model_validator(mode="after")
    def _consistent(self) -> OpcuaDevice:
        problems: list[str] = []
        if self.security_policy == "None":
            if self.security_mode != "None":
                problems.append(
                    f"security_mode {self.security_mode!r} needs security_policy "
                    "'Basic256Sha256'"
                )
        else:
            if self.security_mode == "None":
                problems.append(
                    "security_policy 'Basic256Sha256' needs security_mode 'Sign' or "
                    "'SignAndEncrypt'"
                )
            missing = [k for k in ("certificate_file", "private_key_file")
                       if getattr(self, k) is None]
            if missing:
                problems.append(f"security_policy 'Basic256Sha256' needs {' and '.join(missing)}")
        if self.password_file is not None and self.username is None:
            problems.append("password_file is set but username is not; set both or neither")
        if not self.events and not self.nodes:
            problems.append("nothing to read: configure at least one [[devices.events]] "
                            "or [[devices.nodes]] entry")
        if not self.generic_signals and any(e.kind == "event" for e in self.events):
            problems.append("events: kind 'event' needs a preset or a [devices.mapping] "
                            "saying what its fields mean")
        points = [n.point for n in self.nodes]
        dupes = sorted({p for p in points if points.count(p) > 1})
        if dupes:
            problems.append(f"nodes: point names used more than once: {dupes}")
        if self.backoff_max < self.backoff_initial:
            problems.append("backoff_max must not be below backoff_initial")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def build(cls, ctx: DriverContext[Any]) -> Driver:
        """The running driver for ``ctx.devices``."""
        from drivers.opcua.driver import OpcuaDriver

        return OpcuaDriver(ctx)
