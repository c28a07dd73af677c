"""Protocol drivers: each reads devices and hands records to the committer.

``build_drivers`` is the registry: a device's ``driver`` key picks its class.
Protocol libraries are imported only when a device of that kind is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buffer.service import Committer
    from gateway.config import GatewayConfig
    from gateway.core.protocols import Driver


def build_drivers(cfg: GatewayConfig, committer: Committer) -> list[Driver]:
    """One driver per MQTT broker and kind (scanners, VDA 5050), one per field device."""
    from gateway.config import ModbusDevice, MqttDevice, OpcuaDevice, Vda5050Device

    site = cfg.site.id
    drivers: list[Driver] = []
    for broker in cfg.brokers:
        scanners = [d for d in cfg.devices if isinstance(d, MqttDevice) and d.broker == broker.id]
        if scanners:
            from drivers.mqtt import MqttDriver

            drivers.append(MqttDriver(site, broker, scanners, committer))
        fleets = [d for d in cfg.devices
                  if isinstance(d, Vda5050Device) and d.broker == broker.id]
        if fleets:
            from drivers.vda5050.driver import Vda5050Driver

            drivers.append(Vda5050Driver(site, broker, fleets, committer))
    for dev in cfg.devices:
        if isinstance(dev, ModbusDevice):
            from drivers.modbus.driver import ModbusDriver

            drivers.append(ModbusDriver(site, dev, committer))
        elif isinstance(dev, OpcuaDevice):
            from drivers.opcua.driver import OpcuaDriver

            drivers.append(OpcuaDriver(site, dev, committer))
    return drivers
