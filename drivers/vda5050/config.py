"""Config model of a VDA 5050 AMR fleet on an MQTT broker — ``driver = "vda5050"``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gateway.core.config import ByteSize, DeviceModel, Identifier

if TYPE_CHECKING:
    from gateway.core.protocols import Driver, DriverContext

#: The VDA 5050 topics the gateway reads: ``<interface>/<major>/<manufacturer>/<serial>/<topic>``.
TOPICS = ("state", "connection", "order", "instantActions")

# One MQTT topic level: no wildcards, no separators, not empty.
_LEVEL = r"^[^/+#\x00]+$"


class Vda5050Device(DeviceModel):
    """An AMR fleet (one or more vehicles) speaking VDA 5050 over MQTT.

    Without ``manufacturer`` and ``serial_numbers`` the fleet is every vehicle
    publishing under ``<interface_name>/<major_version>/``; either narrows it.
    """

    KIND: ClassVar[str] = "vda5050"
    ROLES: ClassVar[tuple[str, ...]] = ("amr",)


    id: Identifier
    driver: Literal["vda5050"]
    role: str = "amr"
    broker: Identifier
    interface_name: Annotated[str, Field(pattern=_LEVEL)] = "uagv"
    major_version: Annotated[str, Field(pattern=r"^v[0-9]+$")] = "v2"
    manufacturer: Annotated[str, Field(pattern=_LEVEL)] | None = None
    serial_numbers: list[Annotated[str, Field(pattern=_LEVEL)]] = []
    pick_actions: list[str] = ["pick"]
    drop_actions: list[str] = ["drop"]
    station_parameter: str = "stationName"
    load_parameter: str = "loadId"
    max_vehicles: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    #: Battery percent below which a vehicle raises ``amr_battery_low`` (unset: not watched).
    battery_low: Annotated[float, Field(gt=0, le=100)] | None = None
    #: Battery percent at or above which it is cleared (default ``battery_low`` + 5, max 100).
    battery_clear: Annotated[float, Field(gt=0, le=100)] | None = None
    max_payload_bytes: Annotated[ByteSize, Field(ge=256, le=16 * 1024 * 1024)] = 1024 * 1024

    @field_validator("serial_numbers")
    @classmethod
    def _unique_serials(cls, v: list[str]) -> list[str]:
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"serial numbers listed more than once: {dupes}")
        return v

    @field_validator("pick_actions", "drop_actions")
    @classmethod
    def _action_types(cls, v: list[str]) -> list[str]:
        if not v or any(not t for t in v):
            raise ValueError("expected a non-empty list of VDA 5050 action types, e.g. ['pick']")
        return v

    @field_validator("battery_clear")
    @classmethod
    def _clear_above_low(cls, v: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("battery_low")
        if v is not None and low is None:
            raise ValueError("battery_clear needs battery_low (the level that raises the alarm)")
        if v is not None and low is not None and v <= low:
            raise ValueError(f"battery_clear ({v:g}) must be above battery_low ({low:g}): "
                             "it is the level that clears the alarm")
        return v

    def battery_levels(self) -> tuple[float | None, float | None]:
        """``(battery_low, battery_clear)`` with the default clear level filled in."""
        low, clear = self.battery_low, self.battery_clear
        if low is not None and clear is None:
            clear = min(100.0, low + 5.0)
        return low, clear

    @model_validator(mode="after")
    def _disjoint_actions(self) -> Vda5050Device:
        both = sorted(set(self.pick_actions) & set(self.drop_actions))
        if both:
            raise ValueError(f"action types {both} are in both pick_actions and drop_actions")
        return self

    def subscriptions(self) -> list[str]:
        """The MQTT topic filters this fleet needs (all four topics of each vehicle)."""
        base = f"{self.interface_name}/{self.major_version}"
        manufacturer = self.manufacturer or "+"
        serials = self.serial_numbers or ["+"]
        return [f"{base}/{manufacturer}/{serial}/{topic}"
                for serial in serials for topic in TOPICS]

    def matches(self, manufacturer: str, serial: str) -> bool:
        """Whether the vehicle ``manufacturer``/``serial`` belongs to this fleet."""
        if self.manufacturer is not None and manufacturer != self.manufacturer:
            return False
        return not self.serial_numbers or serial in self.serial_numbers

    def group(self) -> str:
        """Every fleet on one broker shares its connection."""
        return self.broker

    @classmethod
    def build(cls, ctx: DriverContext[Any]) -> Driver:
        """The running driver for ``ctx.devices``."""
        from drivers.vda5050.driver import Vda5050Driver

        return Vda5050Driver(ctx)
