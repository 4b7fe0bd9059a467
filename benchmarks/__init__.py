"""Benchmarks of the forwarder against real EPICS servers and a real Kafka broker."""
