"""Protocol drivers: each reads devices and hands what it reads to the ingest pipeline.

A driver speaks its protocol only. It is built by its device's config model
(``build(ctx)`` in ``drivers/<kind>/config.py``) from a ``DriverContext``
(gateway/core/protocols.py) and never imports recognizers, sinks, the store or
the app's config. Protocol libraries are imported only when a device of that
kind is configured.
"""
