"""Shared test helpers (real EPICS servers in subprocesses, ports, environments)."""
