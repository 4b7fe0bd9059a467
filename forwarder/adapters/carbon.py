"""Push the forwarder's metrics to a Carbon (Graphite/Grafana) server as plaintext lines.

`--grafana-carbon-address HOST[:PORT]` (port 2003 by default) and
`--statistics-update-interval SECONDS` (default 10), as in the ESS forwarder.  Every interval
the same samples that `/metrics` serves (taken from a Prometheus collector, so the two can
never disagree) are sent as ``<prefix>.<name> <value> <unix time>`` lines, where the prefix
is ``forwarder.<host>.<service-id>`` (dots in the host and service id become ``_``, spaces
are removed and it is lower case, as the ESS forwarder builds it).  Metric names drop the
``forwarder_`` of the Prometheus name and add label values as further path components
(``dropped_total.queue_full``, ``pvs.connected``); the ESS forwarder's own names
``pvs_subscribed``, ``send_buffer_errors_total`` and ``send_delivery_errors_total`` are sent
as well, so its Grafana dashboards keep working.

It never holds up forwarding: it runs on its own thread, every socket operation has a
timeout, and each interval sends one snapshot (a snapshot that cannot be sent is dropped,
counted and the connection re-made at the next interval; nothing queues up).  Carbon never
writes to its clients, so a readable socket means the server closed it: that is checked
before each send, so a restarted server gets the next snapshot instead of losing it into a
dead connection.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from forwarder.core.ratelimit import RepeatLimiter

log = logging.getLogger(__name__)

DEFAULT_CARBON_PORT = 2003
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: The ESS forwarder's metric names, from the samples they correspond to here.
_ESS_ALIASES = {
    "send_delivery_errors_total": ("delivery_errors_total", None),
    "send_buffer_errors_total": ("dropped_total", "queue_full"),
}
_WARN_EVERY_S = 60.0


def _component(text: str) -> str:
    return _UNSAFE.sub("_", text.strip()).strip("_") or "_"


def carbon_prefix(hostname: str, service_id: str) -> str:
    """``forwarder.<host>.<service-id>``, each part one path component, lower case."""
    host = _component(hostname.replace(" ", "")).lower()
    service = _component(service_id.replace(" ", "")).lower()
    return f"forwarder.{host}.{service}"


def samples_of(registry: Any) -> list[tuple[str, float]]:
    """(Carbon name, value) of every sample a prometheus_client registry collects.

    Histogram buckets are left out (Graphite has no use for cumulative buckets); their
    ``_sum`` and ``_count`` are kept.  The ESS forwarder's names are added.
    """
    out: list[tuple[str, float]] = []
    pvs_total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            name: str = sample.name
            if name.endswith(("_bucket", "_created")):
                continue
            if name.startswith("forwarder_"):
                name = name[len("forwarder_") :]
            parts = [_component(name)] + [_component(v) for v in sample.labels.values()]
            value = float(sample.value)
            out.append((".".join(parts), value))
            if name == "pvs":
                pvs_total += value
    found = dict(out)
    out.append(("pvs_subscribed", pvs_total))
    for alias, (name, label) in _ESS_ALIASES.items():
        key = name if label is None else f"{name}.{label}"
        if key in found:
            out.append((alias, found[key]))
    return out


def format_lines(prefix: str, samples: Iterable[tuple[str, float]], now_s: int) -> bytes:
    """Carbon plaintext protocol: one ``path value timestamp`` line per sample."""
    lines = []
    for name, value in samples:
        text = repr(int(value)) if float(value).is_integer() else repr(float(value))
        lines.append(f"{prefix}.{name} {text} {now_s}\n")
    return "".join(lines).encode("ascii")


class CarbonReporter:
    """A thread that sends `samples()` to a Carbon server every `interval_s` seconds."""

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        samples: Callable[[], Iterable[tuple[str, float]]],
        interval_s: float = 10.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.samples = samples
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.sent_batches = 0
        self.failed_batches = 0
        self.connects = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carbon", daemon=True)
        self._warnings = RepeatLimiter(_WARN_EVERY_S)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the thread (waits at most a socket timeout) and close the connection."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(self.timeout_s + 1.0 if timeout_s is None else timeout_s)
        self._disconnect()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.send_once()

    def send_once(self) -> bool:
        """Send one snapshot now; False (counted, logged at a sane rate) when it failed."""
        try:
            payload = format_lines(self.prefix, self.samples(), int(time.time()))
        except Exception as err:  # noqa: BLE001 - a metrics bug must not end the thread
            self._failed(f"collecting metrics failed: {err}")
            return False
        try:
            sock = self._connection()
            sock.sendall(payload)
        except OSError as err:
            self._disconnect()
            self._failed(f"cannot send metrics to Carbon at {self.host}:{self.port}: {err}")
            return False
        self.sent_batches += 1
        return True

    def _connection(self) -> socket.socket:
        sock = self._sock
        if sock is not None and self._closed_by_peer(sock):
            self._disconnect()
            sock = None
        if sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self._sock = sock
            self.connects += 1
            log.info("Sending metrics to Carbon at %s:%d", self.host, self.port)
        return sock

    @staticmethod
    def _closed_by_peer(sock: socket.socket) -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(4096) == b""  # Carbon never sends: readable means closed
        except OSError:
            return True

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _failed(self, message: str) -> None:
        self.failed_batches += 1
        if self._warnings.admit("failed") is not None:
            log.warning("%s (%d snapshots not sent so far)", message, self.failed_batches)
