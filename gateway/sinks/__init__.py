"""Upstream sinks: each has its own cursor, route filter and retry state."""

from gateway.core.protocols import Sink
from gateway.sinks.http import HttpSink
from gateway.sinks.mqtt import MqttSink

__all__ = ["HttpSink", "MqttSink", "Sink"]
