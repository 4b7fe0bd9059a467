"""forwarder: EPICS (Channel Access, PV Access) to Apache Kafka, as ESS FlatBuffers messages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("forwarder")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0+unknown"
    try:
        from pathlib import Path

        import tomllib

        _pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        with _pyproject.open("rb") as _f:
            __version__ = str(tomllib.load(_f)["project"]["version"])
    except (OSError, KeyError, ValueError, ImportError):
        pass
