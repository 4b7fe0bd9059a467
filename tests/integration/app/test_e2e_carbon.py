"""End to end: `--grafana-carbon-address` pushes the /metrics counters to a real Carbon
listener as plaintext lines, and keeps doing so across the listener's restart."""

from __future__ import annotations

import re
import socket
import time

import pytest

from forwarder.adapters.carbon import carbon_prefix
from forwarder.core.config_messages import UpdateKind, encode_config_message
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.carbon import CarbonListener
from tests.support.forwarder_process import ForwarderProcess
from tests.support.kafka import TopicReader, produce, unique_topic

pytestmark = pytest.mark.integration

LINE = re.compile(r"^(?P<path>[a-z0-9_.-]+) (?P<value>[0-9.e+-]+) (?P<ts>[0-9]+)$")


def _latest(lines: list[str], path: str) -> float | None:
    values = [float(line.split()[1]) for line in lines if line.split(" ", 1)[0] == path]
    return values[-1] if values else None


def test_carbon_lines_from_a_forwarding_forwarder_survive_a_listener_restart(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    listener = CarbonListener().start()
    service_id = unique_topic("carbon_svc")
    fp = ForwarderProcess(
        kafka_bootstrap,
        args=[
            "--grafana-carbon-address", f"127.0.0.1:{listener.port}",
            "--statistics-update-interval", "1",
            "--fake-pv-period", "100",
            "--service-id", service_id,
        ],
    )  # fmt: skip
    forwarders.append(fp)
    prefix = carbon_prefix(socket.gethostname(), service_id)
    forwarded = f"{prefix}.updates_forwarded_total"
    try:
        fp.start()
        data = unique_topic("data")
        streams = [StreamSpec("FAKE:CARBON:1", "f144", data, Protocol.FAKE)]
        produce(kafka_bootstrap, fp.config_topic, [encode_config_message(UpdateKind.ADD, streams)])

        lines = listener.wait_for(lambda ls: (_latest(ls, forwarded) or 0) >= 5, 30.0)
        now = time.time()
        for line in lines:
            match = LINE.match(line)
            assert match, line
            assert match["path"].startswith(prefix + ".")
            assert abs(int(match["ts"]) - now) < 120
        assert _latest(lines, f"{prefix}.streams_configured") == 1
        assert _latest(lines, f"{prefix}.pvs_subscribed") == 1
        assert _latest(lines, f"{prefix}.dropped_total.queue_full") == 0
        before = _latest(lines, forwarded)
        assert before is not None

        # What Carbon was told was forwarded did reach Kafka.
        with TopicReader(kafka_bootstrap, data) as reader:
            reader.wait_for(
                lambda ms: sum(1 for m in ms if m.schema_id == "f144") >= before, timeout=20
            )

        listener.stop()  # Carbon goes away; the forwarder goes on forwarding ...
        with TopicReader(kafka_bootstrap, data) as reader:
            reader.wait_for(
                lambda ms: sum(1 for m in ms if m.schema_id == "f144") >= before + 20,
                timeout=20,
            )
        listener.clear()
        listener.start()  # ... and gets the counters again when Carbon is back.
        listener.wait_for(lambda ls: (_latest(ls, forwarded) or 0) >= before + 20, 30.0)
        assert fp.proc is not None and fp.proc.poll() is None
        assert fp.stop() == 0
    finally:
        listener.stop()
