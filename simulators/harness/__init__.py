"""Harnesses that run the gateway and the simulators as child processes.

``process`` starts, watches and stops any child process; ``gateway`` and
``sorter`` wrap the gateway daemon and the sorter simulator with what tests,
benchmarks and the demo ask of them; ``wms`` runs the WMS simulator in a
process of its own; ``toml`` renders gateway configuration files.
"""
