"""The whole simulated site, its ground-truth ledger and the truth check.

``python -m simulators site`` runs orders through put walls, a Modbus
conveyor, an OPC UA sorter, pack stations and VDA 5050 AMRs (``flow``),
writing every physical happening to a ledger (``ledger``), with a control API
for faults (``control``). ``python -m simulators site --verify LEDGER --wms
URL`` compares what the WMS simulator accepted with the ledger (``verify``,
driven by the table in ``kinds``) and prints one JSON line.
"""

from simulators.site.cli import add_arguments, run
from simulators.site.config import SiteLayout, site_devices
from simulators.site.flow import FAULTS, Site, SiteOptions
from simulators.site.kinds import KINDS, Kind
from simulators.site.ledger import Entry, Ledger, read_ledger
from simulators.site.verify import fetch_wms_events, verify

__all__ = ["FAULTS", "KINDS", "Entry", "Kind", "Ledger", "Site", "SiteLayout", "SiteOptions",
           "add_arguments", "fetch_wms_events", "read_ledger", "run", "site_devices", "verify"]
