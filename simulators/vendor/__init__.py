"""Devices the project did not write: a vendor sorter, a generic PLC and a JSON scanner.

Each speaks its protocol the way a third-party device does — its own event
type and field names, its own register map, its own JSON shape — so the
gateway's declarative mappings are tested against schemas that are not the
project's. Every one writes a JSON-lines ledger of what it did
(``simulators.vendor.ledger``) for tests to compare with the gateway's events.
"""
