"""Wiring: command line, logging and the running service."""
