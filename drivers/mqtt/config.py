"""Config model of a device read over MQTT — ``driver = "mqtt"`` (barcode scanners)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from gateway.core.config import DeviceModel, Duration, Identifier, Model

if TYPE_CHECKING:
    from gateway.core.protocols import Driver, DriverContext


class ScannerFields(Model):
    """Where a scanner's JSON payload keeps each field (dotted paths allowed)."""

    code: str = "code"
    read_id: str | None = "read_id"
    timestamp: str | None = "timestamp"
    symbology: str | None = "symbology"


class MqttDevice(DeviceModel):
    """A device read over MQTT (today: barcode scanners publishing JSON reads)."""

    KIND: ClassVar[str] = "mqtt"
    ROLES: ClassVar[tuple[str, ...]] = ("scanner", "pick_station", "pack_station")

    id: Identifier
    driver: Literal["mqtt"]
    role: str = "scanner"
    broker: Identifier
    topic: str
    fields: ScannerFields = ScannerFields()
    debounce: Duration = 0.5
    max_payload_bytes: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)] = 65536
    no_read_codes: list[str] = ["NOREAD", ""]
    location: str | None = None
    #: A pick or pack station's field map (``[devices.station]``, docs/stations.md):
    #: validated by ``gateway.config``.
    station: Any = None

    @property
    def generic_signals(self) -> bool:
        """Stations read whole JSON documents, like a mapping."""
        return self.role in ("pick_station", "pack_station") or super().generic_signals

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or "#" in v[:-1] or any(
            ("+" in part or "#" in part) and len(part) > 1 for part in v.split("/")
        ):
            raise ValueError(f"not a valid MQTT topic filter: {v!r}")
        return v

    def group(self) -> str:
        """Every scanner on one broker shares its connection."""
        return self.broker

    @classmethod
    def build(cls, ctx: DriverContext[Any]) -> Driver:
        """One ``MqttDriver`` for the scanners on ``ctx.broker``."""
        from drivers.mqtt.driver import MqttDriver

        return MqttDriver(ctx)
