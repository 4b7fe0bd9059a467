"""The controller: what the forwarder does between EPICS callbacks.

It applies configuration messages, chooses the configuration to restore at start, runs the
periodic re-sends and the status timer, and shuts down in the order that loses least.  It
is built from ports (`forwarder.app.ports`) and never creates a Kafka client or an EPICS
context itself, so all of this is unit-tested with in-memory fakes; `forwarder.app.service`
wires in the real adapters.

Everything here runs on one thread (the control loop).  EPICS callbacks go straight from
the adapters' threads through the core into the sink and never touch the controller.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forwarder.app.cluster import ClusterMember
from forwarder.app.logging_setup import TRACE
from forwarder.app.ports import (
    Clock,
    ConfigSource,
    DataSink,
    MessageWriter,
    MonitorFactory,
    StorageReader,
    StorageUnavailable,
    SystemClock,
)
from forwarder.core.config_messages import (
    ConfigCommand,
    ConfigMessageError,
    UpdateKind,
    decode_config_message,
    encode_config_message,
)
from forwarder.core.counters import Drop, ProcessCounters
from forwarder.core.events import Monitors
from forwarder.core.forwarding import Channel, ForwardingCore, Reporter, StreamOutput, Subscribers
from forwarder.core.registry import Change, StreamRegistry
from forwarder.core.scheduler import ResendSchedule, Timers
from forwarder.core.status import StatusBuilder
from forwarder.core.streams import Protocol, StreamSpec
from forwarder.core.timestamps import TimestampPolicy

log = logging.getLogger("forwarder")

SOFTWARE_NAME = "forwarder"
#: Control loop wake-ups: at least every _MAX_WAIT_S (config polling, health heartbeat),
#: at most every _MIN_WAIT_S when timers are pending.
_MAX_WAIT_S = 0.1
_MIN_WAIT_S = 0.02


#: Seconds between attempts to subscribe a stream whose subscription failed.
_SUBSCRIBE_RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)

#: Failed subscriptions logged one by one per pass (config change or retry round).
_FAILURES_LOGGED_PER_PASS = 10

#: Seconds between attempts to read the storage topic while it cannot be read.
_RESTORE_RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


@dataclass
class RestoreState:
    """Where restoring from the storage topic stands (shown in status and metrics)."""

    pending: bool
    attempts: int = 0
    error: str = ""
    next_attempt_ns: int = 0

    def as_status(self) -> dict[str, object]:
        return {"pending": self.pending, "attempts": self.attempts, "error": self.error}


@dataclass
class FailedStream:
    """A configured stream whose subscription failed; retried with back-off."""

    spec: StreamSpec
    attempts: int = 0
    error: str = ""
    next_attempt_ns: int = 0


@dataclass(frozen=True)
class ControllerSettings:
    """The part of the forwarder's settings the controller acts on."""

    service_id: str
    #: No default: the one default is `Settings.status_interval`.
    status_interval_ms: int
    version: str = "0+unknown"
    #: Re-send period of periodic streams; None: no re-sends.
    pv_update_period_ms: int | None = None
    use_receive_time: bool = False


class Controller:
    """Configuration, restore, re-sends, status timing and shutdown, over injected ports.

    `storage_reader` is None when restoring is off (no storage topic, or
    `--skip-retrieval`); `storage_writer` is None without a storage topic; `status_writer`
    is None without a status topic.
    """

    def __init__(
        self,
        settings: ControllerSettings,
        *,
        sink: DataSink,
        config_source: ConfigSource,
        monitor_factory: MonitorFactory,
        storage_reader: StorageReader | None = None,
        storage_writer: MessageWriter | None = None,
        status_writer: MessageWriter | None = None,
        clock: Clock | None = None,
        counters: ProcessCounters | None = None,
        reporter: Reporter | None = None,
        cluster: ClusterMember | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.config_source = config_source
        self.storage_reader = storage_reader
        self.storage_writer = storage_writer
        self.status_writer = status_writer
        self.clock: Clock = clock or SystemClock()
        self.counters = counters or ProcessCounters()
        self._monitor_factory = monitor_factory
        self.monitors: dict[Protocol, Monitors] = {}
        self.core = ForwardingCore(
            sink=sink,
            policy=TimestampPolicy(use_receive_time=settings.use_receive_time),
            service_id=settings.service_id,
            subscribers=Subscribers(self._subscribe, self._unsubscribe),
            reporter=reporter,
            counters=self.counters,
            clock=self.clock,
        )
        self.registry = StreamRegistry()
        self.timers = Timers()
        period = settings.pv_update_period_ms
        self.resends: ResendSchedule[StreamOutput] | None = (
            ResendSchedule(period * 1_000_000, self._last_sent_of) if period else None
        )
        self.status_builder = StatusBuilder()
        #: Bumped on every configuration change (the status builder caches by it).
        self.config_version = 0
        #: Monotonic ns of the control loop's last pass (the health probe checks it).
        self.heartbeat_ns = self.clock.monotonic_ns()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._periodic_warned = False
        self._started = False
        #: Configured streams whose subscription failed, by stream key.
        self.failed: dict[tuple[str, str, str, Protocol], FailedStream] = {}
        self._failures_in_pass = 0
        self.restore = RestoreState(pending=storage_reader is not None)
        #: Set by `run`: waits while a restore is pending end early on a signal.
        self._stop: threading.Event | None = None
        #: Messages left undelivered at shutdown (None until the flush is done).
        self.undelivered: int | None = None
        #: This process's part of a cluster (`--group`): only streams of the shards it
        #: owns run in the core.  None: stand-alone, every stream is owned.
        self.cluster = cluster
        self._cluster_joined = False
        #: A config change was applied while another member (or none) wrote storage.
        self._unstored = False
        if cluster is not None:
            cluster.bind(
                self.core,
                self.registry.streams,
                lambda spec: self._start_stream(spec, logging.DEBUG),
                self._stop_stream,
                self._on_storage_owner,
            )

    # -- monitors -----------------------------------------------------------------------
    def _subscribe(self, protocol: Protocol, name: str, channel: Channel) -> Any:
        monitors = self.monitors.get(protocol)
        if monitors is None:
            monitors = self._monitor_factory(protocol, self._add_timer)
            self.monitors[protocol] = monitors
        return monitors.subscribe(name, channel)

    @staticmethod
    def _unsubscribe(subscription: Any) -> None:
        subscription.close()

    def _add_timer(self, period_ns: int, tick: Callable[[int], None]) -> None:
        """The monitors' timer hook: `tick(now_unix_ns)` every `period_ns`."""
        clock = self.clock
        self.timers.every(period_ns, lambda _mono: tick(clock.time_ns()), clock.monotonic_ns())

    # -- re-send schedule ---------------------------------------------------------------
    def _last_sent_of(self, out: StreamOutput) -> int | None:
        if out.active and out.spec.periodic:
            return out.last_sent_ns
        out.scheduled = False
        return None

    def _run_resends(self, now_mono: int) -> None:
        if self.resends is None:
            return
        due = self.resends.pop_due(now_mono, limit=20_000)
        if not due:
            return
        now_ms = self.clock.time_ns() // 1_000_000
        for out in due:
            self.core.resend(out, now_ms)
            out.last_sent_ns = now_mono

    # -- configuration ------------------------------------------------------------------
    def handle_config_message(self, raw: bytes) -> Change | None:
        """Decode and apply one config message; never raises on bad input."""
        try:
            command = decode_config_message(raw, rf5k_periodic=self.resends is not None)
        except ConfigMessageError as err:
            self.counters.drop(Drop.BAD_CONFIG)
            log.error("Ignored config message: %s", err)
            return None
        return self.apply(command, persist=True)

    def apply(self, command: ConfigCommand, persist: bool) -> Change:
        for reason in command.rejected:
            self.counters.drop(Drop.BAD_CONFIG)
            log.error(
                "Ignored stream in %s %s message: %s", command.schema_id, command.kind.name, reason
            )
        change = self.registry.apply(command)
        if self.failed and command.kind in (UpdateKind.ADD, UpdateKind.REPLACE):
            # Sending the ADD of a stream that failed to start again retries it at once.
            for spec in command.streams:
                failure = self.failed.get(spec.key)
                if failure is not None:
                    failure.next_attempt_ns = 0
        # One line per stream for ordinary changes; a change of thousands of streams gets
        # its summary line only (the per-stream lines at debug level).
        level = logging.INFO if len(change.added) + len(change.removed) <= 100 else logging.DEBUG
        for spec in change.removed:
            self._stop_stream(spec)
            log.log(level, "Removed stream %s", spec.describe())
        cluster = self.cluster
        self._failures_in_pass = 0
        for spec in change.added + change.updated:
            if cluster is None or cluster.owns(spec):
                self._start_stream(spec, level)
        self._report_failures()
        if change:
            self.config_version += 1
            log.info(
                "%s %s: %d added, %d removed, %d updated; %d streams configured",
                command.schema_id,
                command.kind.name,
                len(change.added),
                len(change.removed),
                len(change.updated),
                len(self.registry),
            )
            if persist:
                self._unstored = cluster is not None and not cluster.writes_storage
                self.store_configuration()
            self.publish_status()
        return change

    def _start_stream(self, spec: StreamSpec, level: int = logging.INFO) -> None:
        try:
            out = self.core.add_stream(spec)
        except Exception as err:  # noqa: BLE001 - one bad PV must not stop the others
            self._subscription_failed(spec, err)
            return
        if self.failed.pop(spec.key, None) is not None:
            log.info("Stream %s subscribed after earlier failures", spec.describe())
            self.config_version += 1
        if log.isEnabledFor(level):
            log.log(
                level, "Forwarding %s%s", spec.describe(), " (periodic)" if spec.periodic else ""
            )
        if spec.periodic:
            if self.resends is None:
                if not self._periodic_warned:
                    self._periodic_warned = True
                    log.warning(
                        "Stream %s asks for periodic updates but --pv-update-period is not set; "
                        "no re-sends will happen",
                        spec.describe(),
                    )
            elif not out.scheduled:
                out.scheduled = True
                self.resends.add(out, self.clock.monotonic_ns())

    def _stop_stream(self, spec: StreamSpec) -> None:
        self.failed.pop(spec.key, None)
        self.core.remove_stream(spec)

    # -- failed subscriptions -----------------------------------------------------------
    def _subscription_failed(self, spec: StreamSpec, err: Exception) -> None:
        """Keep the stream configured, show it in status with its error, and try again
        after 1, 2, 4 ... up to 60 s."""
        failure = self.failed.get(spec.key)
        now = self.clock.monotonic_ns()
        # A broken EPICS set-up fails every stream: one line each for the first few of a
        # pass, the rest summed up by `_report_failures`.
        self._failures_in_pass += 1
        loud = self._failures_in_pass <= _FAILURES_LOGGED_PER_PASS
        if failure is None:
            failure = self.failed[spec.key] = FailedStream(spec)
            log.log(
                logging.ERROR if loud else logging.DEBUG,
                "Cannot start stream %s: %s (retrying in %.0f s)",
                spec.describe(),
                err,
                _SUBSCRIBE_RETRY_S[0],
            )
        else:
            failure.spec = spec
            log.log(
                logging.WARNING if loud else logging.DEBUG,
                "Stream %s still cannot start (attempt %d): %s",
                spec.describe(),
                failure.attempts + 1,
                err,
            )
        failure.attempts += 1
        failure.error = f"{type(err).__name__}: {err}"
        delay = _SUBSCRIBE_RETRY_S[min(failure.attempts, len(_SUBSCRIBE_RETRY_S)) - 1]
        failure.next_attempt_ns = now + int(delay * 1e9)
        self.config_version += 1  # the status lists it differently now

    def _retry_failed(self, now: int) -> None:
        if not self.failed:
            return
        due = [f for f in self.failed.values() if f.next_attempt_ns <= now]
        if not due:
            return
        self._failures_in_pass = 0
        for failure in due:
            self._start_stream(failure.spec, logging.INFO)
        self._report_failures()

    def _report_failures(self) -> None:
        extra = self._failures_in_pass - _FAILURES_LOGGED_PER_PASS
        if extra > 0:
            log.error(
                "... and %d more streams cannot start (%d in all; see status)",
                extra,
                len(self.failed),
            )
        self._failures_in_pass = 0

    def _failed_status(self) -> list[dict[str, Any]]:
        return [
            {
                "channel_name": f.spec.channel,
                "protocol": f.spec.protocol.name,
                "output_topic": f.spec.topic,
                "schema": f.spec.schema,
                "periodic": f.spec.periodic,
                "connection": "SUBSCRIBE_FAILED",
                "error": f.error,
                "subscribe_attempts": f.attempts,
            }
            for f in self.failed.values()
        ]

    def store_configuration(self) -> None:
        if self.storage_writer is None:
            return
        if self.cluster is not None and not self.cluster.writes_storage:
            return  # one writer per cluster: the owner of the storage shard
        streams = self.registry.streams()
        if streams:
            payload = encode_config_message(UpdateKind.ADD, streams, "fc00")
        else:
            payload = encode_config_message(UpdateKind.REMOVEALL, [], "fc00")
        key = self.cluster.membership.group if self.cluster else self.settings.service_id
        self.storage_writer.write(payload, key=key.encode())

    def _on_storage_owner(self) -> None:
        """This member just became the storage writer: store what changed while the
        storage shard was between owners (nobody wrote those changes then)."""
        if self._unstored:
            self.store_configuration()

    # -- restore ------------------------------------------------------------------------
    def restore_configuration(self) -> bool:
        """Apply the newest valid configuration in the storage topic, if restoring is on.

        Returns False when the storage topic could not be read: the restore is then
        pending, config messages are held (they wait in the config topic), and the control
        loop tries again with back-off.  An older configuration is never applied instead.
        """
        reader = self.storage_reader
        if reader is None:
            return True
        restore = self.restore
        restore.attempts += 1
        try:
            command = self._newest_stored(reader)
        except StorageUnavailable as err:
            if self._stop is not None and self._stop.is_set():
                return False  # shutting down: the attempt was cancelled, nothing to report
            delay = _RESTORE_RETRY_S[min(restore.attempts, len(_RESTORE_RETRY_S)) - 1]
            restore.error = str(err)
            restore.next_attempt_ns = self.clock.monotonic_ns() + int(delay * 1e9)
            log.error(
                "Configuration NOT restored from the storage topic (attempt %d): %s.  "
                "Nothing is forwarded and config messages wait until it is; "
                "retrying in %.0f s (--skip-retrieval starts empty instead)",
                restore.attempts,
                err,
                delay,
            )
            return False
        restore.pending = False
        restore.error = ""
        if command is None:
            log.info("No stored configuration found")
        elif command.kind == UpdateKind.REMOVEALL:
            log.info("Stored configuration is empty")
        else:
            replace = ConfigCommand(
                kind=UpdateKind.REPLACE,
                streams=command.streams,
                filters=[],
                schema_id=command.schema_id,
                rejected=command.rejected,
            )
            self.apply(replace, persist=False)
            log.info("Restored %d streams from storage topic", len(self.registry))
        if restore.attempts > 1:
            self.publish_status()  # the restore block leaves the status at once
        return True

    def _newest_stored(self, reader: StorageReader) -> ConfigCommand | None:
        """The newest full configuration (ADD, REPLACE or REMOVEALL) in storage; older
        messages are only read when every newer one is unusable."""
        for raw in reader.newest_first():
            try:
                command = decode_config_message(raw, rf5k_periodic=self.resends is not None)
            except ConfigMessageError as err:
                log.warning("Skipping unusable stored configuration: %s", err)
                continue
            if command.kind in (UpdateKind.ADD, UpdateKind.REPLACE, UpdateKind.REMOVEALL):
                return command
            log.warning("Skipping stored %s message: not a full configuration", command.kind.name)
        return None

    # -- status -------------------------------------------------------------------------
    def status(self) -> tuple[dict[str, Any], str]:
        """The status document and its JSON text."""
        extra = {"restore": self.restore.as_status()} if self.restore.pending else None
        doc, text = self.status_builder.build(
            self.core,
            self.counters,
            self.sink.queue_length(),
            self.config_version,
            extra,
            self._failed_status() if self.failed else None,
        )
        if self.cluster is not None:
            part = self.cluster.status(self.registry.streams, self.config_version)
            doc["cluster"] = part
            text = text[:-1] + ',"cluster":' + json.dumps(part, separators=(",", ":")) + "}"
        return doc, text

    def publish_status(self) -> None:
        doc, text = self.status()
        if log.isEnabledFor(TRACE):
            summary = doc["summary"]
            log.log(
                TRACE,
                "Status: %d streams, %d connected, producer queue %d",
                summary["streams"],
                summary["connected"],
                doc["producer_queue_length"],
            )
        if self.status_writer is None:
            return
        from streaming_data_types.status_x5f2 import serialise_x5f2

        s = self.settings
        payload = serialise_x5f2(
            SOFTWARE_NAME, s.version, s.service_id, self.host, self.pid, s.status_interval_ms, text
        )
        self.status_writer.write(payload, key=s.service_id.encode())

    # -- control loop -------------------------------------------------------------------
    def start(self) -> None:
        """Restore the stored configuration and start the status timer."""
        if self._started:
            return
        self._started = True
        if self.restore_configuration():
            self._join_cluster()
        self.timers.every(
            self.settings.status_interval_ms * 1_000_000,
            lambda _n: self.publish_status(),
            self.clock.monotonic_ns(),
        )

    def _join_cluster(self) -> None:
        """After the restore: a member takes shards only once it holds the configuration."""
        if self.cluster is not None and not self._cluster_joined:
            self._cluster_joined = True
            self.cluster.join()

    def _wait_s(self, now: int) -> float:
        next_due = self.timers.next_due_ns()
        if self.resends is not None:
            r = self.resends.next_due_ns()
            if r is not None and (next_due is None or r < next_due):
                next_due = r
        if next_due is None:
            return _MAX_WAIT_S
        if next_due <= now:
            return 0.0  # a backlog (more re-sends due than one pass handles)
        # Re-sends of many streams come due a fraction of a millisecond apart; waking for
        # each would spin.  Waking at most every _MIN_WAIT_S serves them in batches, at
        # most that late.
        return min(_MAX_WAIT_S, max(_MIN_WAIT_S, (next_due - now) / 1e9))

    def step(self) -> None:
        """One pass of the control loop: wait for config (at most until the next timer),
        apply it, run what is due.  While a restore is pending, config is left waiting in
        the config topic and the restore is tried again when due."""
        clock = self.clock
        self.heartbeat_ns = now = clock.monotonic_ns()
        if self.restore.pending:
            if now >= self.restore.next_attempt_ns and self.restore_configuration():
                self._join_cluster()
            else:
                wait = min(self._wait_s(now), (self.restore.next_attempt_ns - now) / 1e9)
                if self._stop is not None:
                    self._stop.wait(wait)
        else:
            for raw in self.config_source.poll(self._wait_s(now)):
                self.handle_config_message(raw)
        if self.cluster is not None and self._cluster_joined:
            self.cluster.poll()
        now = clock.monotonic_ns()
        self.timers.run_due(now)
        self._run_resends(now)
        self._retry_failed(now)

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set."""
        self._stop = stop
        self.start()
        while not stop.is_set():
            self.step()

    # -- shutdown -----------------------------------------------------------------------
    def shutdown(self, flush_timeout_s: float = 3.0) -> int:
        """Stop forwarding, deliver what is queued (bounded), then stop the EPICS clients.

        The order matters under load: unsubscribing many PVs can take seconds, and the
        process has a few seconds in all after a signal, so the data goes first.  The
        count of undelivered messages is logged before and after the EPICS side closes
        (whichever line is the last one names it) and returned.
        """
        self.core.detach()
        if self.cluster is not None and self._cluster_joined:
            # Forwarding has stopped: leave the group now, so that the others take the
            # shards at once instead of after the session time-out.
            self.cluster.leave()
        left = self.sink.close(flush_timeout_s)
        self.undelivered = left
        # Status and storage share half a second (the storage message of a last change
        # matters; a broker that is down must not cost half a second per writer).
        writers_deadline = self.clock.monotonic_ns() + 500_000_000
        for writer in (self.storage_writer, self.status_writer):
            if writer is not None:
                writer.flush(max(0.0, (writers_deadline - self.clock.monotonic_ns()) / 1e9))
        if left:
            log.error("%d messages not delivered (output broker unreachable?)", left)
        self.core.close()
        for monitors in self.monitors.values():
            try:
                monitors.close()
            except Exception as err:  # noqa: BLE001 - shutdown must go on
                log.warning("closing monitors: %s", err)
        self.config_source.close()
        if left:
            log.error("Stopped: %d messages not delivered", left)
        else:
            log.info("Stopped (0 messages not delivered)")
        return left
