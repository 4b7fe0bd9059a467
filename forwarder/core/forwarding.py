"""The forwarding core: EPICS events in, serialised Kafka messages out.

One `Channel` per (protocol, PV) receives the adapter's callbacks and fans each update out
to that PV's `StreamOutput`s (one per configured stream).  Subscribing once per PV, however
many streams use it, keeps the EPICS side cheap and lets two streams of one PV live and die
independently.

The hot path (`Channel.on_update`) does: timestamp check, one serialise per stream, one
`sink.send` per stream.  No locks and no logging there; problems are counted and reported
through `Reporter.problem`, which the application rate-limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from forwarder.core.counters import Drop, ProcessCounters
from forwarder.core.events import ConnectionState
from forwarder.core.latency import LatencyHistogram
from forwarder.core.serialise import (
    UnsupportedValue,
    ValueSerialiser,
    make_value_serialiser,
    serialise_alarm,
    serialise_connection,
)
from forwarder.core.streams import ALARM_SCHEMAS, StreamSpec
from forwarder.core.streams import Protocol as EpicsProtocol
from forwarder.core.timestamps import TimestampPolicy

_NO_ALARM: tuple[int, str] = (-1, "")


class Sink(Protocol):
    """Where messages go (the Kafka producer adapter).  Must never block."""

    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        """Queue one message; False when it was dropped (and counted by the sink)."""
        ...


class Clock(Protocol):
    def time_ns(self) -> int: ...

    def monotonic_ns(self) -> int: ...


class Reporter(Protocol):
    """Receives problems worth a log line; implementations rate-limit per key."""

    def problem(self, key: str, message: str) -> None: ...


class StreamOutput:
    """One configured stream's state: serialiser, last messages for re-sends, counters."""

    __slots__ = (
        "spec",
        "topic",
        "key",
        "serialiser",
        "wants_alarm",
        "last_value",
        "last_alarm",
        "last_connection",
        "last_sent_ns",
        "last_update_ns",
        "alarm_state",
        "forwarded",
        "dropped",
        "unsupported_reported",
        "active",
        "scheduled",
    )

    def __init__(self, spec: StreamSpec, serialiser: ValueSerialiser) -> None:
        self.spec = spec
        self.topic = spec.topic
        self.key = spec.channel.encode()
        self.serialiser = serialiser
        self.wants_alarm = spec.schema in ALARM_SCHEMAS
        #: Last messages (payload, FlatBuffer timestamp in ms) kept for periodic re-sends.
        self.last_value: bytes | None = None
        self.last_alarm: bytes | None = None
        self.last_connection: bytes | None = None
        #: Monotonic time of the last message sent on this stream (for the re-send schedule).
        self.last_sent_ns = 0
        #: Wall-clock unix ns of the last forwarded update (for status).
        self.last_update_ns = 0
        self.alarm_state = _NO_ALARM
        self.forwarded = 0
        self.dropped = 0
        self.unsupported_reported = False
        self.active = True
        #: Whether the re-send schedule holds an entry for this stream (owned by the app).
        self.scheduled = False


class Channel:
    """Receives one PV's events from an adapter (implements `ChannelListener`)."""

    __slots__ = (
        "protocol",
        "name",
        "outputs",
        "previous_ts_ns",
        "connection",
        "connection_ts_ns",
        "subscription",
        "latency",
        "last_update",
        "_core",
    )

    def __init__(self, protocol: EpicsProtocol, name: str, core: ForwardingCore) -> None:
        self.protocol = protocol
        self.name = name
        #: Replaced (never mutated) when streams come and go, so callback threads can
        #: iterate it without a lock.
        self.outputs: tuple[StreamOutput, ...] = ()
        self.previous_ts_ns = 0
        self.connection = ConnectionState.NEVER_CONNECTED
        self.connection_ts_ns = 0
        self.subscription: Any = None
        self.latency = core.latency_of(protocol)
        #: The last accepted update (value, EPICS ns, severity, status), one tuple so that
        #: the control thread reads a consistent one: given to streams added later.
        self.last_update: tuple[Any, int, int, str] | None = None
        self._core = core

    # -- ChannelListener -------------------------------------------------------------
    def on_update(self, value: Any, timestamp_ns: int, severity: int, status_message: str) -> None:
        core = self._core
        counters = core.counters
        counters.updates_received += 1
        now_ns = core.time_ns()
        ts_ns, drop = core.policy.check(timestamp_ns, self.previous_ts_ns, now_ns)
        outputs = self.outputs
        if drop is not None:
            counters.drop(drop)
            for out in outputs:
                out.dropped += 1
            core.reporter.problem(
                f"{drop.value}:{self.name}",
                f"{self.name}: update dropped ({drop.value}, EPICS timestamp "
                f"{timestamp_ns / 1e9:.3f} s, now {now_ns / 1e9:.3f} s)",
            )
            return
        self.previous_ts_ns = ts_ns
        self.last_update = (value, ts_ns, severity, status_message)
        self.latency.observe_ns(now_ns - ts_ns)
        ts_ms = ts_ns // 1_000_000
        send = core.sink.send
        mono = core.monotonic_ns()
        alarm = (severity, status_message)
        forwarded_any = False
        empty = False
        for out in outputs:
            try:
                payload = out.serialiser.serialise(value, ts_ns, severity, status_message)
            except UnsupportedValue as err:
                payload = None
                out.dropped += 1
                counters.drop(Drop.UNSUPPORTED_TYPE)
                if not out.unsupported_reported:
                    out.unsupported_reported = True
                    core.reporter.problem(
                        f"unsupported:{self.name}:{out.spec.schema}",
                        f"{self.name}: {out.spec.schema} cannot carry this PV's values ({err}); "
                        "its updates are counted as dropped, connection and alarm "
                        "messages are still forwarded",
                    )
            except Exception as err:  # noqa: BLE001 - a bad value must never kill a callback
                payload = None
                out.dropped += 1
                counters.drop(Drop.SERIALISE_ERROR)
                core.reporter.problem(
                    f"serialise:{self.name}", f"{self.name}: serialisation failed: {err!r}"
                )
            if payload is not None:
                if send(out.topic, out.key, payload, ts_ms):
                    out.forwarded += 1
                    forwarded_any = True
                else:
                    out.dropped += 1
                out.last_value = payload
                out.last_update_ns = now_ns
                out.last_sent_ns = mono
            else:
                # Nothing current to repeat: a re-send must not claim an older value (an
                # array from before the PV became empty, say) is the PV's value now.
                out.last_value = None
                if type(value) is not str and _is_empty(value):
                    empty = True  # counted once per update, like updates_forwarded
            if out.wants_alarm and alarm != out.alarm_state:
                msg = serialise_alarm(self.name, ts_ns, severity, status_message)
                out.last_alarm = msg
                out.last_sent_ns = mono
                if send(out.topic, out.key, msg, ts_ms):
                    out.alarm_state = alarm  # a refused alarm is tried again next update
        if forwarded_any:
            counters.updates_forwarded += 1
        if empty:
            counters.empty_updates += 1

    def on_connection(self, state: ConnectionState, timestamp_ns: int) -> None:
        if state == self.connection:
            return
        self.connection = state
        self.connection_ts_ns = timestamp_ns
        core = self._core
        for out in self.outputs:
            core.send_connection(self, out)

    # -- helpers ---------------------------------------------------------------------
    def connection_message(self, timestamp_ns: int) -> bytes:
        return serialise_connection(self.name, timestamp_ns, self.connection, self._core.service_id)


def _is_empty(value: Any) -> bool:
    if type(value) is dict:  # an NTTable's columns: empty when it has no rows
        return len(value.get("timestamp", ())) == 0
    try:
        return len(value) == 0
    except TypeError:
        return False


@dataclass
class Subscribers:
    """How the core starts and stops EPICS monitors, one callable per protocol."""

    subscribe: Callable[[EpicsProtocol, str, Channel], Any]
    unsubscribe: Callable[[Any], None]


class NullReporter:
    def problem(self, key: str, message: str) -> None:  # pragma: no cover - trivial
        pass


class ForwardingCore:
    """Owns channels and stream outputs; applied to by the config controller.

    Adding and removing streams happens on the control thread; EPICS callbacks only read
    `Channel.outputs`, which is swapped atomically.
    """

    def __init__(
        self,
        sink: Sink,
        policy: TimestampPolicy,
        service_id: str,
        subscribers: Subscribers,
        reporter: Reporter | None = None,
        counters: ProcessCounters | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.sink = sink
        #: Wall-clock and monotonic time (a test passes a clock it controls).
        self.time_ns: Callable[[], int] = clock.time_ns if clock is not None else time.time_ns
        self.monotonic_ns: Callable[[], int] = (
            clock.monotonic_ns if clock is not None else time.monotonic_ns
        )
        self.policy = policy
        self.service_id = service_id
        self.subscribers = subscribers
        self.reporter: Reporter = reporter or NullReporter()
        self.counters = counters or ProcessCounters()
        self.channels: dict[tuple[EpicsProtocol, str], Channel] = {}
        self.outputs: dict[tuple[str, str, str, EpicsProtocol], StreamOutput] = {}
        #: EPICS timestamp -> produce latency, per protocol (exported as metrics).
        self.latency: dict[EpicsProtocol, LatencyHistogram] = {}

    def latency_of(self, protocol: EpicsProtocol) -> LatencyHistogram:
        hist = self.latency.get(protocol)
        if hist is None:
            hist = self.latency[protocol] = LatencyHistogram()
        return hist

    def add_stream(self, spec: StreamSpec) -> StreamOutput:
        """Start forwarding `spec`; subscribes the PV if no other stream uses it yet."""
        existing = self.outputs.get(spec.key)
        if existing is not None:
            existing.spec = spec
            return existing
        out = StreamOutput(spec, make_value_serialiser(spec.schema, spec.channel))
        self.outputs[spec.key] = out
        ckey = (spec.protocol, spec.channel)
        channel = self.channels.get(ckey)
        if channel is None:
            channel = Channel(spec.protocol, spec.channel, self)
            self.channels[ckey] = channel
            channel.outputs = (out,)
            try:
                channel.subscription = self.subscribers.subscribe(
                    spec.protocol, spec.channel, channel
                )
            except BaseException:
                # Leave nothing half-registered, so a later add_stream subscribes again.
                channel.outputs = ()
                del self.channels[ckey]
                del self.outputs[spec.key]
                raise
        else:
            channel.outputs = channel.outputs + (out,)
            if channel.connection != ConnectionState.NEVER_CONNECTED:
                self.send_connection(channel, out, late=True)
            self._send_current_value(channel, out)
        return out

    def _send_current_value(self, channel: Channel, out: StreamOutput) -> None:
        """Give a stream added to a PV that is already monitored the PV's current value
        (and alarm) at once: the PV may not change for hours (a set-point), and periodic
        re-sends need something to repeat.  The FlatBuffers carry the update's EPICS
        time; the Kafka timestamp is now (a repeat, as for re-sends)."""
        last = channel.last_update
        if last is None or out.last_update_ns:
            return  # nothing seen yet, or an update already reached this stream itself
        value, ts_ns, severity, status_message = last
        now_ms = time.time_ns() // 1_000_000
        try:
            payload = out.serialiser.serialise(value, ts_ns, severity, status_message)
        except Exception:  # noqa: BLE001 - unsupported or bad: the next update reports it
            payload = None
        if payload is not None:
            out.last_value = payload
            if self.sink.send(out.topic, out.key, payload, now_ms):
                out.forwarded += 1
            else:
                out.dropped += 1
        if out.wants_alarm:
            alarm = (severity, status_message)
            msg = serialise_alarm(channel.name, ts_ns, severity, status_message)
            out.last_alarm = msg
            if self.sink.send(out.topic, out.key, msg, now_ms):
                out.alarm_state = alarm
        out.last_sent_ns = time.monotonic_ns()

    def remove_stream(self, spec: StreamSpec) -> None:
        """Stop forwarding `spec`; unsubscribes the PV when it was its last stream."""
        out = self.outputs.pop(spec.key, None)
        if out is None:
            return
        out.active = False
        ckey = (spec.protocol, spec.channel)
        channel = self.channels.get(ckey)
        if channel is None:
            return
        channel.outputs = tuple(o for o in channel.outputs if o is not out)
        if not channel.outputs:
            del self.channels[ckey]
            if channel.subscription is not None:
                self._unsubscribe(channel)

    def _unsubscribe(self, channel: Channel) -> None:
        """Stop a PV's monitor.  A failure (the socket of a stalled or vanished server:
        BlockingIOError, EPIPE, ECONNRESET, a race with a disconnect) is counted and
        reported, never raised: the configuration change it is part of must go on (and
        reach the storage topic), and the stream is gone either way."""
        try:
            self.subscribers.unsubscribe(channel.subscription)
        except Exception as err:  # noqa: BLE001 - one monitor must not stop the change
            self.counters.monitor_stop_errors += 1
            self.reporter.problem(
                f"unsubscribe:{channel.name}",
                f"{channel.name}: stopping the {channel.protocol.name} monitor failed "
                f"({err!r}); the stream is removed anyway",
            )

    def channel_of(self, out: StreamOutput) -> Channel | None:
        return self.channels.get((out.spec.protocol, out.spec.channel))

    def send_connection(self, channel: Channel, out: StreamOutput, late: bool = False) -> None:
        """Send the PV's connection state to one stream.  The FlatBuffer carries when the
        state began; `late` (a stream added to a PV already in that state) uses now as
        the Kafka timestamp so time-based lookups and retention treat it as new."""
        now_ns = self.time_ns()
        ts_ns = channel.connection_ts_ns or now_ns
        msg = channel.connection_message(ts_ns)
        out.last_connection = msg
        kafka_ms = (now_ns if late else ts_ns) // 1_000_000
        self.sink.send(out.topic, out.key, msg, kafka_ms)  # a refusal is counted by the sink
        out.last_sent_ns = self.monotonic_ns()

    def resend(self, out: StreamOutput, now_ms: int) -> int:
        """Re-send the stream's last messages with Kafka timestamp `now_ms`.

        The FlatBuffer timestamps inside stay the original ones, so consumers that drop
        repeated timestamps recognise the repeat.  Returns the number of messages sent.
        """
        sent = 0
        send = self.sink.send
        for payload in (out.last_value, out.last_alarm, out.last_connection):
            if payload is not None:
                send(out.topic, out.key, payload, now_ms)
                sent += 1
        if sent:
            self.counters.resends += 1
        return sent

    def all_outputs(self) -> Iterable[StreamOutput]:
        return self.outputs.values()

    def detach(self) -> None:
        """Stop forwarding at once, without touching the EPICS side (the first step of a
        shutdown: what is queued can then be flushed while no new data comes in)."""
        for out in self.outputs.values():
            out.active = False  # the re-send schedule drops them
        for channel in self.channels.values():
            channel.outputs = ()  # late callbacks forward nothing

    def close(self) -> None:
        """Unsubscribe everything (shutdown)."""
        self.detach()
        for channel in list(self.channels.values()):
            if channel.subscription is not None:
                self._unsubscribe(channel)  # shutdown goes on past a failure
        self.channels.clear()
        self.outputs.clear()
