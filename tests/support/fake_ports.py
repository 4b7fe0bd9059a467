"""In-memory implementations of the controller's ports (`forwarder.app.ports`).

These are fakes of the forwarder's own small interfaces, not of Kafka or EPICS: each one
records what the controller did and lets a test decide what the outside world says.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from forwarder.app.cluster import ClusterMember
from forwarder.app.controller import Controller, ControllerSettings
from forwarder.app.ports import StorageUnavailable, TimerHook
from forwarder.core.config_messages import decode_config_message, encode_config_message
from forwarder.core.events import ChannelListener, ConnectionState, Monitors
from forwarder.core.streams import Protocol, StreamSpec

SERVICE_ID = "controller-test"
START_WALL_NS = 1_780_000_000 * 1_000_000_000


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes
    payload: bytes
    timestamp_ms: int

    @property
    def schema(self) -> str:
        return self.payload[4:8].decode()


class FakeClock:
    """Time moves only when the test says so."""

    def __init__(self) -> None:
        self.mono = 1_000_000_000
        self.wall = START_WALL_NS

    def monotonic_ns(self) -> int:
        return self.mono

    def time_ns(self) -> int:
        return self.wall

    def advance(self, seconds: float) -> None:
        step = int(seconds * 1e9)
        self.mono += step
        self.wall += step


class FakeSink:
    """Accepts everything; `undeliverable` messages stay queued at close."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.sent: list[Sent] = []
        self.undeliverable = 0
        self.closed_with: float | None = None
        self.events = events if events is not None else []

    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        self.sent.append(Sent(topic, key, payload, timestamp_ms))
        return True

    def queue_length(self) -> int:
        return self.undeliverable

    def close(self, timeout_s: float) -> int:
        self.closed_with = timeout_s
        self.events.append("sink.close")
        return self.undeliverable

    def of(self, schema: str) -> list[Sent]:
        return [m for m in self.sent if m.schema == schema]


class FakeConfigSource:
    """Each `poll` returns the next queued batch (or nothing)."""

    def __init__(self) -> None:
        self.batches: deque[list[bytes]] = deque()
        self.polls: list[float] = []
        self.closed = False

    def push(self, *messages: bytes) -> None:
        self.batches.append(list(messages))

    def poll(self, timeout_s: float) -> list[bytes]:
        self.polls.append(timeout_s)
        return self.batches.popleft() if self.batches else []

    def close(self) -> None:
        self.closed = True


class FakeWriter:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, bytes | None]] = []

    def write(self, payload: bytes, key: bytes | None = None) -> None:
        self.written.append((payload, key))

    def flush(self, timeout_s: float) -> int:
        return 0

    def stored(self) -> list[set[StreamSpec]]:
        """Each written configuration as the set of its streams (REMOVEALL: empty)."""
        return [set(decode_config_message(p, rf5k_periodic=False).streams) for p, _ in self.written]


class FakeStorage:
    """A storage topic given newest first; counts how far back the controller read."""

    def __init__(self, newest_first: list[bytes], fail: str | None = None) -> None:
        self.messages = newest_first
        self.fail = fail
        self.read = 0

    def newest_first(self) -> Iterator[bytes]:
        if self.fail is not None:
            raise StorageUnavailable(self.fail)
        for raw in self.messages:
            self.read += 1
            yield raw


class FakeSubscription:
    def __init__(self, monitors: FakeMonitors, name: str, listener: ChannelListener) -> None:
        self.monitors = monitors
        self.name = name
        self.listener = listener
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.monitors.events.append(f"unsubscribe {self.name}")


@dataclass
class FakeMonitors:
    """Monitors of one protocol; names in `failing` raise on subscribe."""

    protocol: Protocol
    events: list[str]
    failing: dict[str, Exception] = field(default_factory=dict)
    subscriptions: dict[str, FakeSubscription] = field(default_factory=dict)
    closed: bool = False

    def subscribe(self, channel: str, listener: ChannelListener) -> FakeSubscription:
        self.events.append(f"subscribe {channel}")
        error = self.failing.get(channel)
        if error is not None:
            raise error
        sub = FakeSubscription(self, channel, listener)
        self.subscriptions[channel] = sub
        return sub

    def close(self) -> None:
        self.closed = True
        self.events.append(f"close {self.protocol.name}")

    def connect(self, channel: str, ts_ns: int) -> None:
        self.subscriptions[channel].listener.on_connection(ConnectionState.CONNECTED, ts_ns)

    def update(self, channel: str, value: float, ts_ns: int) -> None:
        self.subscriptions[channel].listener.on_update(value, ts_ns, 0, "")


class FakeMonitorFactory:
    """One `FakeMonitors` per protocol, created on first use like the real wiring."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.monitors: dict[Protocol, FakeMonitors] = {}
        self.timer_hooks: dict[Protocol, TimerHook] = {}
        self.failing: dict[str, Exception] = {}
        self.created: list[Protocol] = []
        #: Errors the next calls raise (a library context that cannot be created).
        self.creation_errors: list[Exception] = []

    def __call__(self, protocol: Protocol, timer_hook: TimerHook) -> Monitors:
        if self.creation_errors:
            raise self.creation_errors.pop(0)
        self.created.append(protocol)
        self.timer_hooks[protocol] = timer_hook
        monitors = FakeMonitors(protocol, self.events, self.failing)
        self.monitors[protocol] = monitors
        return monitors


@dataclass
class Rig:
    """A controller and every fake it is built from."""

    controller: Controller
    clock: FakeClock
    sink: FakeSink
    config: FakeConfigSource
    factory: FakeMonitorFactory
    storage_writer: FakeWriter
    status_writer: FakeWriter
    events: list[str]

    def send(self, *messages: bytes) -> None:
        """Deliver messages as one fetched batch and run one control-loop pass."""
        self.config.push(*messages)
        self.controller.step()

    def monitors(self, protocol: Protocol = Protocol.CA) -> FakeMonitors:
        return self.factory.monitors[protocol]

    def statuses(self) -> int:
        return len(self.status_writer.written)


def make_rig(
    storage: FakeStorage | None = None,
    pv_update_period_ms: int | None = None,
    status_interval_ms: int = 4000,
    configure: Callable[[FakeMonitorFactory], None] | None = None,
    cluster: ClusterMember | None = None,
) -> Rig:
    events: list[str] = []
    clock = FakeClock()
    sink = FakeSink(events)
    config = FakeConfigSource()
    factory = FakeMonitorFactory(events)
    if configure is not None:
        configure(factory)
    storage_writer = FakeWriter()
    status_writer = FakeWriter()
    controller = Controller(
        ControllerSettings(
            service_id=SERVICE_ID,
            version="9.9.9",
            status_interval_ms=status_interval_ms,
            pv_update_period_ms=pv_update_period_ms,
        ),
        sink=sink,
        config_source=config,
        monitor_factory=factory,
        storage_reader=storage,
        storage_writer=storage_writer,
        status_writer=status_writer,
        clock=clock,
        cluster=cluster,
    )
    return Rig(controller, clock, sink, config, factory, storage_writer, status_writer, events)


def stored(kind_name: str, streams: list[StreamSpec]) -> bytes:
    from forwarder.core.config_messages import UpdateKind

    return encode_config_message(UpdateKind[kind_name], streams, "fc00")


class FakeMembership:
    """Stands in for the group adapter: the test plays the coordinator (`assign`)."""

    group = "fake-group"
    shard_count = 4
    member_id = "member-1"

    def __init__(self, events: list[str] | None = None) -> None:
        self.owned: frozenset[int] = frozenset()
        self.on_change: Callable[[frozenset[int]], None] | None = None
        self.rebalances = 0
        self.sessions_lost = 0
        self.join_retries = 0
        self.joined = False
        self.left = False
        self.events = events if events is not None else []

    def join(self) -> None:
        self.joined = True
        self.events.append("group join")

    def poll(self) -> None:
        pass

    def leave(self) -> None:
        self.left = True
        self.events.append("group leave")
        self.assign(frozenset())

    def assign(self, shards: frozenset[int]) -> None:
        """What librdkafka's assign/revoke callbacks would report."""
        if shards != self.owned:
            self.rebalances += 1
        self.owned = shards
        if self.on_change is not None:
            self.on_change(shards)
