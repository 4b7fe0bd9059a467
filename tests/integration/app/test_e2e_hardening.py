"""End to end: one bad stream or one failing monitor must not take forwarding down, and a
stream joining a PV that is already monitored gets its current value at once.

A forwarder subprocess against a real broker and a real softioc IOC (CA and PVA); judged
from the output topics, the status topic and the log only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import (
    UpdateType as Fc00UpdateType,
)

from tests.integration.app.test_e2e_config import (
    WAIT,
    Harness,
    epics_fc00,
    f144_of,
    fc00,
    harness_factory,  # noqa: F401 - the fixture
    ioc_env,  # noqa: F401 - the fixture
    topics,
)
from tests.support.epics_servers import Record, SoftIoc
from tests.support.kafka import Msg

pytestmark = pytest.mark.integration

CA, PVA = Fc00Protocol.CA, Fc00Protocol.PVA


def wait_values(h: Harness, topic: str, channel: str, count: int = 1) -> list[float]:
    """The f144 values of `channel` on `topic` once at least `count` arrived."""
    reader = h.reader(topic)
    reader.wait_for(lambda ms: len(f144_of(ms, channel)) >= count, WAIT)
    return [float(d.value) for _, d in f144_of(reader.messages, channel)]


def test_ca_name_too_long_to_search_for_is_rejected_and_ca_keeps_working(
    harness_factory: Callable[..., Harness],  # noqa: F811
    ioc_env: dict[str, str],  # noqa: F811
) -> None:
    """Such a name used to end caproto's search thread: no CA PV added later connected,
    and, stored, it broke CA again at every restart."""
    too_long = "HARD:" + "L" * 55
    good = "HARD:GOOD"
    (topic,) = topics(1, "hard")
    with SoftIoc([Record(good, "ao", 1.5)], env=ioc_env):
        h = harness_factory(args=[], epics=ioc_env)
        h.send(fc00(Fc00UpdateType.ADD, epics_fc00(too_long, topic, CA)))
        h.send(fc00(Fc00UpdateType.ADD, epics_fc00(good, topic, CA)))
        assert wait_values(h, topic, good) == [1.5]
        h.wait_configured([(good, topic, "f144")])
        log = h.fw.log()
        assert "59 characters" in log and too_long in log, log[-3000:]
        h.assert_running()


def test_stream_added_to_a_monitored_pv_gets_its_current_value_at_once(
    harness_factory: Callable[..., Harness],  # noqa: F811
    ioc_env: dict[str, str],  # noqa: F811
) -> None:
    """A second file writer's stream of a set-point that never changes gets the value
    at once, over CA and PVA, and its periodic re-sends carry it."""
    pv = "HARD:SP"
    first_ca, first_pva, late_ca, late_pva = topics(4, "hard")
    with SoftIoc([Record(pv, "ao", 0.0)], env=ioc_env) as ioc:
        ioc.put(pv, 3.25)  # a fresh EPICS timestamp; the PV never changes again
        h = harness_factory(args=["--pv-update-period", "500"], epics=ioc_env)
        h.send(fc00(Fc00UpdateType.ADD, epics_fc00(pv, first_ca, CA), epics_fc00(pv, first_pva)))
        assert wait_values(h, first_ca, pv) == [3.25]
        assert wait_values(h, first_pva, pv) == [3.25]
        original = f144_of(h.reader(first_ca).messages, pv)[0][1].timestamp_unix_ns
        h.send(
            fc00(
                Fc00UpdateType.ADD,
                epics_fc00(pv, late_ca, CA, periodic=1),
                epics_fc00(pv, late_pva, PVA, periodic=1),
            )
        )
        sent_ms = h.sent_ms
        for topic in (late_ca, late_pva):
            # The value at once, then re-sends of it (same FlatBuffer, newer Kafka time).
            assert wait_values(h, topic, pv, count=3)[:3] == [3.25] * 3
            got = f144_of(h.reader(topic).messages, pv)
            assert {d.timestamp_unix_ns for _, d in got} == {original}
            assert all(m.timestamp_ms >= sent_ms for m, _ in got)
        h.assert_running()


def test_resends_after_a_waveform_became_empty_carry_no_stale_array(
    harness_factory: Callable[..., Harness],  # noqa: F811
    ioc_env: dict[str, str],  # noqa: F811
) -> None:
    """An empty update is not forwarded; from then on the periodic re-sends carry the
    PV's alarm and connection state but no value, until a non-empty value arrives."""
    pv = "HARD:WF"
    (topic,) = topics(1, "hard")
    with SoftIoc([Record(pv, "waveform", [1.0, 2.0], "DOUBLE", 4)], env=ioc_env) as ioc:
        ioc.put(pv, [1.0, 2.0])
        h = harness_factory(args=["--pv-update-period", "300"], epics=ioc_env)
        h.send(fc00(Fc00UpdateType.ADD, epics_fc00(pv, topic, CA, periodic=1)))
        reader = h.reader(topic)
        reader.wait_for(lambda ms: len(f144_of(ms, pv)) >= 2, WAIT)  # the value, a re-send
        assert [d.value.tolist() for _, d in f144_of(reader.messages, pv)][:2] == [[1.0, 2.0]] * 2
        ioc.put(pv, [])
        deadline = time.monotonic() + WAIT
        while h.latest_status()["counters"]["empty_updates"] < 1:
            assert time.monotonic() < deadline, "the empty update never reached the forwarder"
        emptied_ms = int(time.time() * 1000)

        def resent_twice(ms: list[Msg]) -> bool:
            return sum(1 for m in ms if m.schema_id == "ep01" and m.timestamp_ms > emptied_ms) >= 2

        reader.wait_for(resent_twice, WAIT)
        assert f144_of(reader.messages, pv, emptied_ms) == []
        ioc.put(pv, [7.0])
        reader.wait_for(lambda ms: bool(f144_of(ms, pv, emptied_ms)), WAIT)
        values = [d.value.tolist() for _, d in f144_of(reader.messages, pv, emptied_ms)]
        assert values and all(v == [7.0] for v in values), values


def test_stock_library_paths_forward_the_same(
    harness_factory: Callable[..., Harness],  # noqa: F811
    ioc_env: dict[str, str],  # noqa: F811
) -> None:
    """`FORWARDER_STOCK_EPICS_CLIENTS=1` (what an untested caproto or p4p release gets):
    no private caproto or p4p part is used; CA and PVA still forward scalars and arrays,
    alarms and connection states, and a second stream of a PV gets its value at once.
    Said once per library in the log."""
    from streaming_data_types.alarm_al00 import Severity

    from tests.support.kafka import decode

    scalar, wave = "HARD:STOCK:AI", "HARD:STOCK:WF"
    ca_topic, pva_topic, late_topic = topics(3, "hard")
    records = [Record(scalar, "ao", 0.0), Record(wave, "waveform", [1, 2], "LONG", 8)]
    with SoftIoc(records, env=ioc_env) as ioc:
        ioc.put(scalar, 1.25)
        env = {**ioc_env, "FORWARDER_STOCK_EPICS_CLIENTS": "1"}
        h = harness_factory(args=[], epics=env)
        h.send(
            fc00(
                Fc00UpdateType.ADD,
                *(
                    epics_fc00(pv, t, p)
                    for pv in (scalar, wave)
                    for t, p in ((ca_topic, CA), (pva_topic, PVA))
                ),
            )  # fmt: skip
        )
        for topic in (ca_topic, pva_topic):
            assert wait_values(h, topic, scalar) == [1.25]
        ioc.put(scalar, 2.5)
        ioc.put(wave, [7, 8, 9])
        ioc.set_alarm(scalar, 2, "HIHI")
        for topic in (ca_topic, pva_topic):
            reader = h.reader(topic)
            reader.wait_for(
                lambda ms: any(d.value.tolist() == [7, 8, 9] for _, d in f144_of(ms, wave)), WAIT
            )

            def major(ms: list[Msg]) -> bool:
                return any(
                    m.schema_id == "al00" and decode(m)[1].severity == Severity.MAJOR for m in ms
                )

            reader.wait_for(major, WAIT)
            assert any(m.schema_id == "ep01" for m in reader.messages)
        h.send(fc00(Fc00UpdateType.ADD, epics_fc00(scalar, late_topic, CA)))
        assert wait_values(h, late_topic, scalar)[-1] == 2.5
        log = h.fw.log()
        assert log.count("using stock caproto") == 1, log[-3000:]
        assert log.count("using p4p's public monitor") == 1, log[-3000:]
        h.assert_running()


def test_stored_ca_name_too_long_does_not_break_ca_after_a_restart(
    kafka_bootstrap: str,
    ioc_env: dict[str, str],  # noqa: F811
    make_reader: Callable[[str, str], Any],
) -> None:
    """A storage topic written before the fix holds such a stream: restoring it must not
    break CA again; the other streams of the stored configuration are restored."""
    from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
        Protocol as P,
    )
    from streaming_data_types.forwarder_config_update_fc00 import StreamInfo, serialise_fc00

    from tests.support.forwarder_process import ForwarderProcess
    from tests.support.kafka import produce, unique_topic

    too_long, good = "HARD:" + "S" * 55, "HARD:STORED"
    storage, (topic,) = unique_topic("storage"), topics(1, "hard")
    stored = serialise_fc00(
        Fc00UpdateType.ADD,
        [StreamInfo(too_long, "f144", topic, P.CA, 0), StreamInfo(good, "f144", topic, P.CA, 0)],
    )
    produce(kafka_bootstrap, storage, [stored])
    with SoftIoc([Record(good, "ao", 6.5)], env=ioc_env):
        fw = ForwarderProcess(kafka_bootstrap, epics=ioc_env, storage_topic=storage)
        try:
            fw.start()
            reader = make_reader(kafka_bootstrap, topic)
            reader.wait_for(lambda ms: bool(f144_of(ms, good)), WAIT)
            assert [float(d.value) for _, d in f144_of(reader.messages, good)] == [6.5]
            assert "59 characters" in fw.log()
        finally:
            fw.close()
