"""Upstream sinks: each has its own cursor, route filter and retry state.

A sink's config model builds it (``build(ctx)`` in gateway/config.py), which
imports only that sink's module: a gateway without an HTTP sink never loads
aiohttp, one without MQTT never loads paho. The names below are loaded on
first use for the same reason.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway.core.protocols import Sink

if TYPE_CHECKING:
    from gateway.sinks.http import HttpSink
    from gateway.sinks.mqtt import MqttSink

__all__ = ["HttpSink", "MqttSink", "Sink"]

_LAZY = {"HttpSink": "gateway.sinks.http", "MqttSink": "gateway.sinks.mqtt"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.sinks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
