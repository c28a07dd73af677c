"""Recognizers: pure per-device-role logic turning signals into events.

A recognizer holds only its own state; it does no I/O and reads no clock
(time travels on the signal). ``feed`` returns the events for one signal.
"""

from gateway.recognizers.scanner import ScannerRecognizer

__all__ = ["ScannerRecognizer"]
