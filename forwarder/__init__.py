"""forwarder: EPICS (Channel Access, PV Access) to Apache Kafka, as ESS FlatBuffers messages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("forwarder")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0+unknown"
