"""Operator tools: the dead letter, audit, reconciliation and container trace
API of the status server (``api``), and the command-line tools (``commands``)."""
