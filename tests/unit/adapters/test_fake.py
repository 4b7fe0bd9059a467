"""FakeMonitors: random doubles on the caller's tick, no threads of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from forwarder.adapters.fake import FakeMonitors
from forwarder.core.events import ConnectionState
from tests.support.recording import RecordingListener


def test_subscribe_reports_connected_and_tick_updates_every_pv() -> None:
    threads_before = threading.active_count()
    fake = FakeMonitors(period_ms=100, seed=1)
    a, b = RecordingListener(), RecordingListener()
    fake.subscribe("FAKE:A", a)
    fake.subscribe("FAKE:B", b)
    assert a.state_list() == [ConnectionState.CONNECTED] == b.state_list()
    assert not a.updates and not b.updates
    assert threading.active_count() == threads_before

    fake.tick(1_700_000_000_000_000_000)
    fake.tick(1_700_000_000_100_000_000)
    for listener in (a, b):
        assert [u.timestamp_ns for u in listener.updates] == [
            1_700_000_000_000_000_000,
            1_700_000_000_100_000_000,
        ]
        for update in listener.updates:
            assert isinstance(update.value, np.floating) and 0.0 <= update.value < 1.0
            assert (update.severity, update.status) == (0, "")
    assert a.updates[0].value != a.updates[1].value
    assert a.updates[0].value != b.updates[0].value


def test_closed_subscription_and_closed_monitors_get_nothing() -> None:
    fake = FakeMonitors(period_ms=10)
    a, b = RecordingListener(), RecordingListener()
    sub_a = fake.subscribe("FAKE:A", a)
    fake.subscribe("FAKE:B", b)
    sub_a.close()
    fake.tick(1)
    assert not a.updates and len(b.updates) == 1
    assert fake.channel_count() == 1
    fake.close()
    fake.tick(2)
    assert len(b.updates) == 1
    with pytest.raises(RuntimeError):
        fake.subscribe("FAKE:C", a)


def test_scheduler_hook_receives_period_and_tick() -> None:
    registered: list[tuple[int, Callable[[int], None]]] = []
    fake = FakeMonitors(250, lambda period, tick: registered.append((period, tick)))
    listener = RecordingListener()
    fake.subscribe("FAKE:A", listener)
    ((period_ns, tick),) = registered
    assert period_ns == 250_000_000
    tick(42)
    assert [u.timestamp_ns for u in listener.updates] == [42]


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FakeMonitors(0)


class _Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def on_update(self, value: object, timestamp_ns: int, severity: int, status: str) -> None:
        self.n += 1

    def on_connection(self, state: ConnectionState, timestamp_ns: int) -> None:
        pass


def test_many_fake_pvs_cost_one_loop() -> None:
    fake = FakeMonitors(1000)
    counters = [_Counter() for _ in range(20_000)]
    for i, counter in enumerate(counters):
        fake.subscribe(f"FAKE:{i}", counter)
    start = time.perf_counter()
    fake.tick(1)
    elapsed = time.perf_counter() - start
    assert all(c.n == 1 for c in counters)
    assert elapsed < 1.0, f"tick of 20k fake PVs took {elapsed:.3f}s"
