"""Soak test (off by default): hundreds of counter PVs for N minutes.

    python -m pytest integration-tests --soak-minutes 10 -k soak

The forwarder is launched as in the system test (config file plus FORWARDER_* variables)
and forwards 300 PVA counters (p4p server) and 50 CA counters (softioc IOC), all at 10 Hz,
to one topic.  A counter PV posts 1, 2, 3, ... so every missing number on the output topic
is a lost update.  Reported (printed, and checked against generous thresholds):

* lost updates (gaps in each PV's sequence, and what never arrived after the counters
  stopped), and updates that came twice or out of order;
* the forwarder's resident memory (VmRSS from /proc/PID/status) sampled every minute;
* ERROR lines in its log;
* and it must still exit 0 on SIGTERM at the end.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import (
    UpdateType as Fc00UpdateType,
)
from streaming_data_types.forwarder_config_update_fc00 import StreamInfo, serialise_fc00
from streaming_data_types.logdata_f144 import deserialise_f144
from systest_support import LaunchedForwarder, Status, StatusWatcher, write_config_file

from tests.support.epics_servers import (
    CaRepeater,
    Counters,
    P4pServer,
    SoftIoc,
    epics_env,
    free_port,
)
from tests.support.kafka import TopicReader, create_topic, produce, unique_topic

pytestmark = [pytest.mark.integration, pytest.mark.soak]

PVA_COUNTERS = 300
CA_COUNTERS = 50
RATE_HZ = 10.0
#: Thresholds: generous on purpose (2 cores shared by broker, servers, forwarder and us).
MAX_LOST_FRACTION = 0.01
MAX_RSS_GROWTH_MIB = 100.0
#: How long to wait for the last updates once the counters stopped.
DRAIN_S = 60.0


@dataclass
class Sequence:
    """What arrived of one counter PV: enough to count gaps without keeping the values."""

    last: int = 0
    received: int = 0
    lost: int = 0
    repeated: int = 0

    def add(self, value: int) -> None:
        if value == 0:  # the PV's initial value, sent on connect
            return
        self.received += 1
        if value <= self.last:
            self.repeated += 1
            return
        self.lost += value - self.last - 1
        self.last = value


@dataclass
class Tally:
    sequences: dict[str, Sequence]
    messages: int = 0
    other: dict[str, int] = field(default_factory=dict)

    def consume(self, reader: TopicReader, timeout: float) -> int:
        batch = reader.poll_messages(timeout)
        reader.messages.clear()
        for msg in batch:
            self.messages += 1
            if msg.schema_id != "f144":
                self.other[msg.schema_id] = self.other.get(msg.schema_id, 0) + 1
                continue
            update = deserialise_f144(msg.value)
            self.sequences[update.source_name].add(int(update.value))
        return len(batch)

    def lost(self) -> int:
        return sum(s.lost for s in self.sequences.values())

    def repeated(self) -> int:
        return sum(s.repeated for s in self.sequences.values())


@pytest.fixture(scope="session")  # session, like `system_kafka`, so it can come first
def soak_minutes(request: pytest.FixtureRequest) -> float:
    minutes = float(request.config.getoption("--soak-minutes", default=0.0) or 0.0)
    if minutes <= 0:
        pytest.skip("soak test is off: run with --soak-minutes N")
    return minutes


@dataclass
class Servers:
    pva: P4pServer
    ca: SoftIoc
    forwarder_env: dict[str, str]


@pytest.fixture
def servers(soak_minutes: float) -> Iterator[Servers]:
    ca_port, pva_port, ioc_pva_port = free_port(), free_port(), free_port()
    env = epics_env(ca_port, pva_port)  # what the forwarder and the p4p server use
    # The IOC serves CA on the forwarder's CA port; its own PVA server sits elsewhere.
    ioc_env = epics_env(ca_port, ioc_pva_port)
    prefix = f"SOAK{pva_port}:"
    pva = P4pServer(
        env=env,
        counters=Counters(PVA_COUNTERS, RATE_HZ, f"{prefix}PVA:", "LONG", autostart=False),
    )
    ca = SoftIoc(
        env=ioc_env,
        counters=Counters(CA_COUNTERS, RATE_HZ, f"{prefix}CA:", "LONG", autostart=False),
    )
    with CaRepeater(env), pva, ca:
        yield Servers(pva, ca, env)


def test_soak(
    soak_minutes: float,  # first: skips before the broker is even looked at
    servers: Servers,
    system_kafka: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bootstrap = system_kafka
    config_topic, status_topic, data_topic = (unique_topic(f"soak_{n}") for n in "csd")
    for topic in (config_topic, status_topic, data_topic):
        create_topic(bootstrap, topic, partitions=1)
    config_file = write_config_file(
        tmp_path / "forwarder.conf",
        {
            "config-topic": f"{bootstrap}/{config_topic}",
            "status-topic": f"{bootstrap}/{status_topic}",
            "status-interval": "2000",
            "service-id": "soak",
        },
    )
    env = {
        **servers.forwarder_env,
        "FORWARDER_OUTPUT_BROKER": bootstrap,
        "FORWARDER_LOG_FILE": str(tmp_path / "forwarder.log"),
    }
    assert servers.pva.counters is not None and servers.ca.counters is not None
    groups = {
        Fc00Protocol.PVA: servers.pva.counters.names(),
        Fc00Protocol.CA: servers.ca.counters.names(),
    }
    streams = [
        StreamInfo(pv, "f144", data_topic, protocol, 0)
        for protocol, names in groups.items()
        for pv in names
    ]
    total = len(streams)
    fw = LaunchedForwarder(config_file, env, tmp_path / "console.log")
    status = StatusWatcher(bootstrap, status_topic)
    reader = TopicReader(bootstrap, data_topic)
    tally = Tally({s.channel: Sequence() for s in streams})

    def say(line: str) -> None:
        with capsys.disabled():
            print(f"\n[soak] {line}", end="", flush=True)

    try:
        fw.start()
        status.wait(fw, lambda s: True, 60, "a first status")
        produce(bootstrap, config_topic, [serialise_fc00(Fc00UpdateType.ADD, streams)])
        status.wait(
            fw,
            lambda s: s["summary"] == {"streams": total, "connected": total},
            120,
            f"{total} streams connected",
        )
        servers.pva.counters_run(True)
        servers.ca.counters_run(True)
        start = time.monotonic()
        end = start + soak_minutes * 60
        rss = [(0.0, fw.rss_kib())]
        say(f"{total} PVs at {RATE_HZ:g} Hz for {soak_minutes:g} min")
        next_sample = start + 60
        while True:
            now = time.monotonic()
            if now >= next_sample or now >= end:
                rss.append(((now - start) / 60, fw.rss_kib()))
                say(
                    f"{rss[-1][0]:5.1f} min: RSS {rss[-1][1] / 1024:.1f} MiB, "
                    f"{tally.messages} messages, {tally.lost()} lost so far"
                )
                next_sample += 60
                if now >= end:
                    break
            assert fw.running, fw.describe()
            tally.consume(reader, 0.5)

        servers.pva.counters_run(False)
        servers.ca.counters_run(False)
        time.sleep(1.0)  # a tick in progress when we said stop still completes
        final = {
            Fc00Protocol.PVA: int(servers.pva.counter_stats()["ticks"]),
            Fc00Protocol.CA: int(servers.ca.counter_stats()["ticks"]),
        }
        expected_last = {pv: final[p] for p, names in groups.items() for pv in names}

        def behind() -> int:
            return sum(expected_last[pv] - s.last for pv, s in tally.sequences.items())

        deadline = time.monotonic() + DRAIN_S
        while behind() and time.monotonic() < deadline:
            tally.consume(reader, 0.5)
        never_arrived = behind()
        settle = time.monotonic() + 2.5  # > the status interval: a status after the drain
        while time.monotonic() < settle:
            status.poll(0.3)
        last_status: Status = status.newest.get(fw.pid, {})
        exit_code = fw.stop(signal.SIGTERM)
        errors = fw.error_lines()
    finally:
        fw.stop()
        status.close()
        reader.close()

    expected = sum(final[p] * len(names) for p, names in groups.items())
    lost = tally.lost() + never_arrived
    worst = sorted(tally.sequences.items(), key=lambda kv: kv[1].lost, reverse=True)[:5]
    # Growth after the first minute (warm-up: buffers and caches fill) when there is one.
    baseline = rss[1] if len(rss) >= 3 else rss[0]
    growth_mib = (rss[-1][1] - baseline[1]) / 1024
    report = [
        f"duration {soak_minutes:g} min, {total} PVs ({len(groups[Fc00Protocol.PVA])} PVA, "
        f"{len(groups[Fc00Protocol.CA])} CA) at {RATE_HZ:g} Hz; counters reached "
        f"PVA {final[Fc00Protocol.PVA]}, CA {final[Fc00Protocol.CA]}",
        f"updates expected {expected}, received {sum(s.received for s in tally.sequences.values())}"
        f", lost {lost} ({lost / max(1, expected):.4%}: {tally.lost()} gaps, {never_arrived} "
        f"never arrived), repeated/out of order {tally.repeated()}",
        f"worst PVs: {[(pv, s.lost) for pv, s in worst if s.lost]}",
        f"other messages: {tally.other}",
        "RSS MiB by minute: " + ", ".join(f"{m:.1f}:{k / 1024:.1f}" for m, k in rss),
        f"RSS growth since minute {baseline[0]:.1f}: {growth_mib:.1f} MiB",
        f"forwarder counters: {json.dumps(last_status.get('counters'))}",
        f"ERROR lines: {len(errors)}" + "".join(f"\n    {line}" for line in errors[:10]),
        f"exit code on SIGTERM: {exit_code}",
    ]
    say("report:\n  " + "\n  ".join(report) + "\n")

    assert exit_code == 0, fw.describe()
    assert errors == [], "\n".join(errors[:20])
    assert lost <= MAX_LOST_FRACTION * expected, "\n".join(report)
    assert tally.repeated() == 0, "\n".join(report)
    assert growth_mib <= MAX_RSS_GROWTH_MIB, "\n".join(report)
