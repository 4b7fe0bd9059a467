"""System test: the forwarder as deployed, from restore to restart, against real servers.

The forwarder is started exactly as a user starts it — `forwarder_launch.py --config-file
FILE`, with the output broker and log file given as `FORWARDER_*` environment variables —
against the broker under test (`FORWARDER_TEST_KAFKA`, or an embedded Tansu broker) and a real
softioc IOC serving its records over Channel Access and PV Access.  Configuration goes in
and data comes out through Kafka only; the checks read the status, storage and output
topics with independent consumers and decode them with `streaming_data_types`.

The steps share one forwarder, IOC and set of topics (module fixture) and run in order; a
step whose predecessor failed (or was deselected) is skipped rather than failed.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streaming_data_types.epics_connection_ep01 import ConnectionInfo
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import (
    UpdateType as Fc00UpdateType,
)
from streaming_data_types.fbschemas.forwarder_config_update_rf5k.UpdateType import (
    UpdateType as Rf5kUpdateType,
)
from streaming_data_types.forwarder_config_update_fc00 import StreamInfo, serialise_fc00
from streaming_data_types.forwarder_config_update_rf5k import serialise_rf5k
from systest_support import (
    LaunchedForwarder,
    OutputTopic,
    Status,
    StatusWatcher,
    source_of,
    wait_newest,
    write_config_file,
)

from tests.support.epics_servers import CaRepeater, Record, SoftIoc, epics_env, free_port
from tests.support.kafka import Msg, create_topic, decode, produce, unique_topic

pytestmark = pytest.mark.integration

WAIT = 30.0
#: (channel, protocol, topic, schema, periodic) — a stream as status and storage show it.
Row = tuple[str, str, str, str, bool]
PROTOCOL_NAMES = {Fc00Protocol.CA: "CA", Fc00Protocol.PVA: "PVA"}


@dataclass
class System:
    bootstrap: str
    workdir: Path
    service_id: str
    config_topic: str
    status_topic: str
    storage_topic: str
    pvs: dict[str, str]
    ioc: SoftIoc
    config_file: Path
    env: dict[str, str]
    status: StatusWatcher
    outputs: dict[str, OutputTopic]
    restored_streams: list[StreamInfo]
    new_streams: list[StreamInfo] = field(default_factory=list)
    forwarders: list[LaunchedForwarder] = field(default_factory=list)
    passed: set[str] = field(default_factory=set)

    @property
    def fw(self) -> LaunchedForwarder:
        return self.forwarders[-1]

    def launch(self) -> LaunchedForwarder:
        console = self.workdir / f"console-{len(self.forwarders)}.log"
        fw = LaunchedForwarder(self.config_file, self.env, console)
        self.forwarders.append(fw)
        return fw.start()

    def require(self, step: str) -> None:
        if step not in self.passed:
            pytest.skip(f"needs step {step!r}, which failed or did not run")

    def output(self, topic: str) -> OutputTopic:
        found = self.outputs.get(topic)
        if found is None:
            found = self.outputs[topic] = OutputTopic(self.bootstrap, topic)
        return found

    def send_config(self, payload: bytes) -> None:
        produce(self.bootstrap, self.config_topic, [payload])


def row(stream: Any) -> Row:
    """A stream of an fc00 message (StreamInfo) as a comparable row."""
    return (
        stream.channel,
        PROTOCOL_NAMES[stream.protocol],
        stream.topic,
        stream.schema,
        bool(stream.periodic),
    )


def status_rows(status: Status) -> set[Row]:
    return {
        (s["channel_name"], s["protocol"], s["output_topic"], s["schema"], bool(s["periodic"]))
        for s in status["streams"]
    }


def shows(streams: list[StreamInfo], connected: bool = True) -> Callable[[Status], bool]:
    """Status predicate: exactly `streams` configured (and all connected)."""
    expected = {row(s) for s in streams}

    def predicate(status: Status) -> bool:
        if status_rows(status) != expected:
            return False
        return not connected or all(s["connection"] == "CONNECTED" for s in status["streams"])

    return predicate


def f144_equal(pv: str, expected: Any) -> Callable[[OutputTopic], bool]:
    def predicate(out: OutputTopic) -> bool:
        return any(np.array_equal(np.asarray(d[2].value), expected) for d in out.of("f144", pv))

    return predicate


def tdct_equal(pv: str, relative_ns: list[int]) -> Callable[[OutputTopic], bool]:
    """A tdct message whose absolute times are one EPICS timestamp plus `relative_ns`,
    that timestamp being the message's Kafka timestamp (ms)."""
    offsets = np.asarray(relative_ns, dtype=np.int64)

    def matches(msg: Msg, obj: Any) -> bool:
        absolute = np.asarray(obj.timestamps, dtype=np.int64)
        if absolute.shape != offsets.shape:
            return False
        bases = absolute - offsets
        return (
            bool(np.all(bases == bases[0]))
            and abs(int(bases[0]) - msg.timestamp_ms * 1_000_000) < 1_000_000
        )

    def predicate(out: OutputTopic) -> bool:
        return any(matches(d[0], d[2]) for d in out.of("tdct", pv))

    return predicate


@pytest.fixture(scope="module")
def system(system_kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("system")
    bootstrap = system_kafka
    prefix = f"SYS{free_port()}:"
    pvs = {name: f"{prefix}{name}" for name in ("DBL", "ENUM", "WF", "TDC")}
    records = [
        Record(pvs["DBL"], "ao", 0.0),
        Record(pvs["ENUM"], "mbbo", 0, choices=("OFF", "ON", "FAULT")),
        Record(pvs["WF"], "waveform", dtype="DOUBLE", length=8),
        Record(pvs["TDC"], "waveform", dtype="LONG", length=8),
    ]
    topics = {
        name: unique_topic(f"sys_{name}")
        for name in ("config", "status", "storage", "restored_ca", "restored_pva")
    }
    # Explicitly created, one partition each: an Apache Kafka with topic auto-creation
    # turned off works too, and every topic is read in the order it was written.
    for topic in topics.values():
        create_topic(bootstrap, topic, partitions=1)

    env_epics = epics_env(free_port(), free_port())
    repeater = CaRepeater(env_epics)  # every real CA host runs one
    ioc = SoftIoc(records, env=env_epics)
    service_id = f"systest-{prefix[3:-1]}"
    settings = {
        "config-topic": f"{bootstrap}/{topics['config']}",
        "status-topic": f"{bootstrap}/{topics['status']}",
        "storage-topic": f"{bootstrap}/{topics['storage']}",
        "status-interval": "500",
        "service-id": service_id,
        "pv-update-period": "2000",
        "verbosity": "Info",
    }
    env = {
        **env_epics,
        "FORWARDER_OUTPUT_BROKER": bootstrap,
        "FORWARDER_LOG_FILE": str(workdir / "forwarder.log"),
    }
    restored = [
        StreamInfo(pvs["DBL"], "f144", topics["restored_ca"], Fc00Protocol.CA, 1),
        StreamInfo(pvs["DBL"], "f144", topics["restored_pva"], Fc00Protocol.PVA, 0),
    ]
    sys_ = System(
        bootstrap=bootstrap,
        workdir=workdir,
        service_id=service_id,
        config_topic=topics["config"],
        status_topic=topics["status"],
        storage_topic=topics["storage"],
        pvs=pvs,
        ioc=ioc,
        config_file=write_config_file(workdir / "forwarder.conf", settings),
        env=env,
        status=StatusWatcher(bootstrap, topics["status"]),
        outputs={},
        restored_streams=restored,
    )
    try:
        repeater.start()
        ioc.start()
        # Fresh timestamps for every record before anything subscribes.
        ioc.put(pvs["DBL"], 0.5)
        ioc.put(pvs["ENUM"], 1)
        ioc.put(pvs["WF"], [1.0, 2.0])
        ioc.put(pvs["TDC"], [1, 2])
        yield sys_
    finally:
        for fw in sys_.forwarders:
            fw.stop()
        sys_.status.close()
        for out in sys_.outputs.values():
            out.close()
        ioc.stop()
        repeater.stop()


def test_1_restores_the_stored_configuration_and_forwards(system: System) -> None:
    # The storage topic as an earlier forwarder left it: an older configuration, then the
    # current one (fc00 ADD of every stream, keyed by the service id).
    older = [StreamInfo(system.pvs["ENUM"], "f144", unique_topic("old"), Fc00Protocol.CA, 0)]
    produce(
        system.bootstrap,
        system.storage_topic,
        [
            serialise_fc00(Fc00UpdateType.ADD, older),
            serialise_fc00(Fc00UpdateType.ADD, system.restored_streams),
        ],
        key=system.service_id,
    )
    fw = system.launch()
    status = system.status.wait(
        fw, shows(system.restored_streams), WAIT, "the restored streams, connected"
    )
    assert status["summary"] == {"streams": 2, "connected": 2}

    system.ioc.put(system.pvs["DBL"], 1.25)
    for stream in system.restored_streams:
        system.output(stream.topic).wait_for(
            f144_equal(system.pvs["DBL"], 1.25), WAIT, "restored value 1.25"
        )
    assert "Restored 2 streams" in fw.log_file_text(), "FORWARDER_LOG_FILE not honoured"
    system.passed.add("restore")


def test_2_removeall_empties_the_configuration_and_the_storage(system: System) -> None:
    system.require("restore")
    system.send_config(serialise_rf5k(Rf5kUpdateType.REMOVEALL, []))
    status = system.status.wait(system.fw, shows([]), WAIT, "no streams")
    assert status["summary"]["streams"] == 0

    def is_removeall(msg: Msg) -> bool:
        schema, update = decode(msg)
        return schema == "fc00" and update.config_change == Fc00UpdateType.REMOVEALL

    newest = wait_newest(
        system.bootstrap, system.storage_topic, is_removeall, WAIT, "an fc00 REMOVEALL"
    )
    assert decode(newest)[1].streams == []
    assert newest.key == system.service_id.encode()
    # Not forwarded any more (checked in step 3, once newer values went through).
    system.ioc.put(system.pvs["DBL"], 2.5)
    system.passed.add("removeall")


def test_3_added_ca_and_pva_streams_forward_what_the_ioc_writes(system: System) -> None:
    system.require("removeall")
    data = {
        Fc00Protocol.CA: unique_topic("sys_data_ca"),
        Fc00Protocol.PVA: unique_topic("sys_data_pva"),
    }
    for topic in data.values():
        create_topic(system.bootstrap, topic, partitions=1)
    pvs = system.pvs
    streams = []
    for protocol, topic in data.items():
        periodic = 1 if protocol == Fc00Protocol.CA else 0
        streams += [
            StreamInfo(pvs["DBL"], "f144", topic, protocol, periodic),
            StreamInfo(pvs["ENUM"], "f144", topic, protocol, 0),
            StreamInfo(pvs["WF"], "f144", topic, protocol, 0),
            StreamInfo(pvs["TDC"], "tdct", topic, protocol, 0),
        ]
    system.new_streams = streams
    system.send_config(serialise_fc00(Fc00UpdateType.ADD, streams))
    status = system.status.wait(system.fw, shows(streams), WAIT, "the 8 new streams, connected")
    assert status["summary"] == {"streams": 8, "connected": 8}

    # Every stream announces its connection, with the service id.
    for stream in streams:
        system.output(stream.topic).wait_for(
            lambda out, pv=stream.channel: any(
                d[2].status == ConnectionInfo.CONNECTED and d[2].service_id == system.service_id
                for d in out.of("ep01", pv)
            ),
            WAIT,
            f"ep01 CONNECTED of {stream.channel}",
        )

    waveform = np.array([0.5, -1.5, 2.25, 1e6, 0.0, 3.0, -7.0, 8.5])
    chopper_ns = [1_000, 250_000, 71_000_000]
    system.ioc.put(pvs["DBL"], 3.5)
    system.ioc.put(pvs["ENUM"], 2)
    system.ioc.put(pvs["WF"], waveform)
    system.ioc.put(pvs["TDC"], chopper_ns)
    for topic in data.values():
        out = system.output(topic)
        out.wait_for(f144_equal(pvs["DBL"], 3.5), WAIT, "double 3.5")
        out.wait_for(f144_equal(pvs["ENUM"], 2), WAIT, "enum index 2")
        out.wait_for(f144_equal(pvs["WF"], waveform), WAIT, f"waveform {waveform}")
        out.wait_for(tdct_equal(pvs["TDC"], chopper_ns), WAIT, f"tdct {chopper_ns}")

    # The value written after REMOVEALL never reached the restored topics, although values
    # written later went through the new streams.
    for stream in system.restored_streams:
        out = system.output(stream.topic)
        out.poll(0.5)
        assert not f144_equal(pvs["DBL"], 2.5)(out), f"{stream.topic} forwarded after REMOVEALL"
        assert not [d for d in out.decoded if source_of(d[2]) != pvs["DBL"]]
    system.passed.add("add")


def test_4_storage_holds_exactly_the_new_configuration(system: System) -> None:
    system.require("add")
    expected = {row(s) for s in system.new_streams}

    def is_new_config(msg: Msg) -> bool:
        schema, update = decode(msg)
        return (
            schema == "fc00"
            and update.config_change == Fc00UpdateType.ADD
            and {row(s) for s in update.streams} == expected
        )

    newest = wait_newest(
        system.bootstrap, system.storage_topic, is_new_config, WAIT, "the new configuration"
    )
    assert len(decode(newest)[1].streams) == len(expected)
    assert newest.key == system.service_id.encode()
    system.passed.add("storage")


def test_5_restart_keeps_the_configuration(system: System) -> None:
    system.require("storage")
    first = system.fw
    assert first.stop(signal.SIGTERM) == 0, first.describe()

    second = system.launch()
    assert second.pid != first.pid
    status = system.status.wait(
        second, shows(system.new_streams), WAIT, "the configuration kept over the restart"
    )
    assert status["summary"] == {"streams": 8, "connected": 8}

    waveform = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0])
    chopper_ns = [5, 6_000_000]
    system.ioc.put(system.pvs["DBL"], 4.75)
    system.ioc.put(system.pvs["ENUM"], 0)
    system.ioc.put(system.pvs["WF"], waveform)
    system.ioc.put(system.pvs["TDC"], chopper_ns)
    for topic in sorted({s.topic for s in system.new_streams}):
        out = system.output(topic)
        out.wait_for(f144_equal(system.pvs["DBL"], 4.75), WAIT, "double 4.75 after restart")
        out.wait_for(f144_equal(system.pvs["ENUM"], 0), WAIT, "enum index 0 after restart")
        out.wait_for(f144_equal(system.pvs["WF"], waveform), WAIT, "waveform after restart")
        out.wait_for(tdct_equal(system.pvs["TDC"], chopper_ns), WAIT, "tdct after restart")

    # Restoring is not a change: the storage still holds the same configuration.
    expected = {row(s) for s in system.new_streams}
    newest = wait_newest(
        system.bootstrap,
        system.storage_topic,
        lambda m: {row(s) for s in decode(m)[1].streams} == expected,
        WAIT,
        "the unchanged configuration",
    )
    assert decode(newest)[1].config_change == Fc00UpdateType.ADD

    assert second.stop(signal.SIGTERM) == 0, second.describe()
    for fw in system.forwarders:
        assert "Stopped" in fw.console(), fw.describe()
        assert fw.error_lines() == [], fw.describe()
