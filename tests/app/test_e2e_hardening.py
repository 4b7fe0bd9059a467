"""End to end: one bad stream or one failing monitor must not take forwarding down, and a
stream joining a PV that is already monitored gets its current value at once.

A forwarder subprocess against a real broker and a real softioc IOC (CA and PVA); judged
from the output topics, the status topic and the log only.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import (
    UpdateType as Fc00UpdateType,
)

from tests.app.test_e2e_config import (
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
