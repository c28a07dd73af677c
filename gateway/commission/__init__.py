"""Commissioning: ``warehouse-gateway try`` runs one device's driver and recognizer dry.

``dryrun`` holds the stand-ins for the store (nothing is kept, nothing is
acknowledged upstream), ``session`` runs one device for a bounded time or
count, ``render`` prints what it saw, ``browse`` and ``scan`` show what an
OPC UA server or a Modbus device exposes so a mapping can be written from it.
"""
