"""MQTT transport shared by the MQTT drivers and the MQTT sink.

``config`` holds the broker model (pydantic only: reading a config never
imports paho); ``link`` is the paho client driven by the event loop and
``takeover`` tells a client-id clash from a plain drop. Import the modules
themselves: this package imports nothing, so that a config without MQTT
never loads paho.
"""
