"""The site's layout and the gateway ``[[devices]]`` that read it.

One place names every device of the simulated site, so the site, the
gateway config, the ledger and the truth check agree on ids and topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from simulators.conveyor_plc import gateway_device

__all__ = ["ABANDON_AFTER_S", "AMR_FLEET", "BATTERY_CLEAR", "BATTERY_LOW", "CONVEYOR", "INDUCT",
           "MANUFACTURER", "READER", "SORTER", "SiteLayout", "site_codes", "site_devices"]

CONVEYOR: Final = "conveyor-01"
SORTER: Final = "sorter-1"
AMR_FLEET: Final = "amr-fleet"
INDUCT: Final = "INDUCT-1"
READER: Final = "INDUCT-1-READER"
MANUFACTURER: Final = "SiteRobotics"
#: The AMR fleet's battery levels (percent): below LOW raises, CLEAR or more clears.
BATTERY_LOW: Final = 20.0
BATTERY_CLEAR: Final = 30.0
_MODEL = "nsu=urn:warehouse-gateway:sorter-sim:model"
#: A pack bench's pack with no input this long is abandoned (the gateway's ``abandon_after``).
ABANDON_AFTER_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class SiteLayout:
    """Counts and names: put-wall stations, pack stations (one per chute), AMRs, docks."""

    site: str = "DC-EAST-1"
    put_walls: int = 1
    pack_stations: int = 2
    amrs: int = 2
    docks: int = 2
    zones: int = 3

    def put_wall(self, n: int) -> str:
        """Id of put-wall station ``n`` (1-based)."""
        return f"putwall-{n:02d}"

    def pack_station(self, n: int) -> str:
        """Id of pack station ``n`` (its scanner's device id)."""
        return f"pack-{n:02d}"

    def pack_location(self, n: int) -> str:
        """Where pack station ``n`` stands (its AMR pick-up point)."""
        return f"PACK-{n:02d}"

    def chute(self, n: int) -> str:
        """The sorter chute feeding pack station ``n``."""
        return f"CHUTE-{n:02d}"

    def dock(self, n: int) -> str:
        """Dock door ``n``."""
        return f"DOCK-{n:02d}"

    def amr(self, n: int) -> str:
        """Serial number of AMR ``n``."""
        return f"AMR-{n:04d}"

    def station_topic(self, station: str, what: str) -> str:
        """Topic of a put-wall station's ``task`` / ``confirm`` messages."""
        return f"site/{self.site}/stations/{station}/{what}"

    def scanner_topic(self, n: int) -> str:
        """Topic of pack station ``n``'s scanner reads."""
        return f"site/{self.site}/pack/{self.pack_location(n)}/scanner/reads"

    def scale_topic(self, n: int) -> str:
        """Topic of pack station ``n``'s scale readings."""
        return f"site/{self.site}/pack/{self.pack_location(n)}/scale"

    def pack_topic(self, n: int, what: str) -> str:
        """Topic of pack station ``n``'s ``task`` / ``close`` messages."""
        return f"site/{self.site}/pack/{self.pack_location(n)}/{what}"


def site_codes() -> list[dict[str, str]]:
    """The site's ``[[site.codes]]``: what each of its codes is, by its shape."""
    return [{"pattern": r"TOTE-\d+", "kind": "container"},
            {"pattern": r"CARTON-\d+", "kind": "carton"},
            {"pattern": r"SKU-\d+", "kind": "sku"},
            {"pattern": r"ORD-\d+", "kind": "order"},
            {"pattern": r"(PUT|PACK|DOCK|CHUTE)-\d+", "kind": "location"}]


def site_devices(layout: SiteLayout, *, modbus_port: int, opcua_port: int,
                 broker: str = "site", poll_interval: str = "200ms") -> list[dict[str, Any]]:
    """The gateway's ``[[devices]]`` tables (as data) for every device of the site."""
    devices: list[dict[str, Any]] = [
        gateway_device(CONVEYOR, modbus_port, poll_interval=poll_interval, zones=layout.zones,
                       extra={"backoff_initial": "100ms", "backoff_max": "1s"}),
        {"id": SORTER, "driver": "opcua", "role": "sorter",
         "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/", "induct": INDUCT, "location": INDUCT,
         "backoff_initial": "100ms", "backoff_max": "1s",
         "events": [
             {"kind": "divert_confirm", "source": "ns=2;s=Sorter",
              "type": "ns=2;s=DivertConfirmEventType"},
             {"kind": "scan", "source": f"{_MODEL};s=InductReader",
              "type": f"{_MODEL};s=AutoIdScanEventType"}],
         "nodes": [{"node": "ns=2;s=Sorter.State", "point": "state", "kind": "status"}]},
    ]
    devices += [{"id": layout.put_wall(n), "driver": "mqtt", "role": "pick_station",
                 "broker": broker, "topic": layout.station_topic(layout.put_wall(n), "+"),
                 "station": {"preset": "put-wall-json"}}
                for n in range(1, layout.put_walls + 1)]
    devices += [{"id": layout.pack_station(n), "driver": "mqtt", "role": "pack_station",
                 "broker": broker, "topic": layout.pack_topic(n, "#"),
                 "location": layout.pack_location(n),
                 "station": {"preset": "pack-bench-json",
                             "abandon_after": f"{ABANDON_AFTER_S}s"}}
                for n in range(1, layout.pack_stations + 1)]
    if layout.amrs:
        devices.append({"id": AMR_FLEET, "driver": "vda5050", "broker": broker,
                        "manufacturer": MANUFACTURER, "battery_low": BATTERY_LOW,
                        "battery_clear": BATTERY_CLEAR})
    return devices
