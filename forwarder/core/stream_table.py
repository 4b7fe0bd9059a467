"""The operator page's view of the forwarder: streams filtered, sorted and paged server-side.

Everything here is read from what the core already keeps for status and re-sends (the
`StreamOutput` counters, last value payload and alarm state, the `Channel` connection
state), so the EPICS hot path pays nothing for the page:

* update and drop *rates* are differences between two samples of the counters, taken when
  somebody asks (at most once per `min_interval_s`), never per update;
* the *preview* of the last value is decoded from the stored value message, and only for
  the rows on the requested page (cached per payload object).

Queries run on the HTTP server's threads while the control thread adds and removes
streams; they only take snapshots (`list(dict.values())`) of the core's dicts.
"""

from __future__ import annotations

import functools
import importlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from forwarder.core.counters import Drop, ProcessCounters
from forwarder.core.events import ConnectionState, Severity
from forwarder.core.forwarding import ForwardingCore, StreamOutput
from forwarder.core.registry import compile_pattern

#: Longest value preview, in characters (the page shows a short hint, not the data).
PREVIEW_CHARS = 60
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Sorting by the preview decodes every matching stream's last value: allowed up to here.
MAX_PREVIEW_SORT = 20_000


class QueryError(ValueError):
    """A request the API cannot answer; the message says what to change (HTTP 400)."""


@dataclass(frozen=True)
class StreamQuery:
    """One `/api/streams` request, validated."""

    filter: str = ""
    topic: str = ""
    state: str = ""
    sort: str = "channel"
    descending: bool = False
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> StreamQuery:
        """Build from URL query parameters; raises `QueryError` with a clear reason."""
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise QueryError(
                f"unknown parameter {unknown[0]!r} (expected {', '.join(sorted(_PARAMS))})"
            )
        sort = params.get("sort", "channel") or "channel"
        if sort not in SORT_COLUMNS:
            raise QueryError(f"cannot sort by {sort!r} (columns: {', '.join(SORT_COLUMNS)})")
        order = params.get("order", "asc") or "asc"
        if order not in ("asc", "desc"):
            raise QueryError(f"order must be asc or desc, not {order!r}")
        state = (params.get("state", "") or "").strip().upper()
        if state and state not in _STATE_FILTERS:
            raise QueryError(
                f"state must be one of {', '.join(sorted(_STATE_FILTERS))}, not {state!r}"
            )
        return cls(
            filter=params.get("filter", ""),
            topic=params.get("topic", ""),
            state=state,
            sort=sort,
            descending=order == "desc",
            page=_int_param(params, "page", 1, 1, 10**9),
            page_size=_int_param(params, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
        )


_PARAMS = {"filter", "topic", "state", "sort", "order", "page", "page_size"}
#: Problem rows: not connected, or dropping since the previous sample.
_STATE_FILTERS = {s.name for s in ConnectionState} | {"PROBLEM"}


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise QueryError(f"{name} must be a whole number, not {text!r}") from None
    if not low <= value <= high:
        raise QueryError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _age_key(out: StreamOutput) -> float:
    # Ascending "time since last update": most recent first, never updated last.
    ts = out.last_update_ns
    return -ts if ts else math.inf


#: Sort columns of the table (the page's column ids).  Keys take a StreamOutput; the
#: columns that need the connection state, rates or previews are built per query.
SORT_COLUMNS: dict[str, Callable[[StreamOutput], Any] | None] = {
    "channel": lambda o: o.spec.channel,
    "protocol": lambda o: o.spec.protocol.name,
    "schema": lambda o: o.spec.schema,
    "topic": lambda o: o.spec.topic,
    "state": None,
    "age": _age_key,
    "rate": None,
    "forwarded": lambda o: o.forwarded,
    "dropped": lambda o: o.dropped,
    "severity": lambda o: o.alarm_state[0],
    "preview": None,
    "shard": None,  # clustered forwarders (`--group`) only
}


class _Sample:
    """Counters of every stream (and of the process) at one moment."""

    __slots__ = ("t", "streams", "process")

    def __init__(self, t: float, streams: dict[StreamOutput, tuple[int, int]], process: Any):
        self.t = t
        self.streams = streams
        self.process = process


def _process_counts(c: ProcessCounters) -> dict[str, int]:
    counts = {
        "updates_received": c.updates_received,
        "updates_forwarded": c.updates_forwarded,
        "messages_produced": c.messages_produced,
        "resends": c.resends,
    }
    for drop, n in c.drops.items():
        counts["dropped:" + drop.value] = n
    return counts


class StreamTable:
    """Answers the page's queries from the core's state (thread-safe, one query at a time)."""

    def __init__(
        self,
        core: ForwardingCore,
        counters: ProcessCounters,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        config_version: Callable[[], object] | None = None,
        shard_of: Callable[[str], int] | None = None,
    ) -> None:
        self.core = core
        #: The cluster shard of a PV name (`--group`); None for a forwarder on its own.
        self.shard_of = shard_of
        #: Changes whenever streams are added or removed; with it, the filtered and sorted
        #: order of a view is reused until the configuration or the sample changes.
        self._config_version = config_version
        self._orders: dict[tuple[Any, ...], tuple[tuple[Any, ...], list[StreamOutput]]] = {}
        self.counters = counters
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._wall_ns = wall_clock_ns
        self._lock = threading.Lock()
        self._previous: _Sample | None = None
        self._samples = 0  # how many samples were taken (the order cache's clock)
        self._current: _Sample | None = None
        self._previews: dict[StreamOutput, tuple[bytes, str]] = {}
        self._f142_alarms: dict[StreamOutput, tuple[bytes, tuple[int, str]]] = {}

    # -- sampling -------------------------------------------------------------------------
    def _sample(self, outputs: list[StreamOutput]) -> None:
        now = self._clock()
        if self._current is not None and now - self._current.t < self.min_interval_s:
            return
        self._previous = self._current
        self._samples += 1
        self._current = _Sample(
            now,
            {out: (out.forwarded, out.dropped) for out in outputs},
            _process_counts(self.counters),
        )

    def _rates(self, out: StreamOutput) -> tuple[float | None, float]:
        prev, cur = self._previous, self._current
        if prev is None or cur is None:
            return None, 0.0
        before = prev.streams.get(out)
        after = cur.streams.get(out)
        if before is None or after is None:
            return None, 0.0
        dt = cur.t - prev.t
        return (after[0] - before[0]) / dt, (after[1] - before[1]) / dt

    def _outputs(self) -> list[StreamOutput]:
        for _ in range(5):
            try:
                return list(self.core.outputs.values())
            except RuntimeError:  # changed while copying (config applied meanwhile)
                continue
        return list(self.core.outputs.values())

    # -- queries --------------------------------------------------------------------------
    def streams(self, query: StreamQuery) -> dict[str, Any]:
        """One page of streams matching `query`, with how many matched in total."""
        with self._lock:
            return self._streams(query)

    def _streams(self, query: StreamQuery) -> dict[str, Any]:
        version = self._config_version() if self._config_version is not None else None
        outputs = self._outputs()
        self._sample(outputs)
        rows = self._ordered(query, outputs, version)
        pages = max(1, -(-len(rows) // query.page_size))
        start = (query.page - 1) * query.page_size
        now_ns = self._wall_ns()
        page = rows[start : start + query.page_size]
        states = self._states_of(page)
        return {
            "total": len(outputs),
            "matched": len(rows),
            "page": query.page,
            "pages": pages,
            "page_size": query.page_size,
            "sort": query.sort,
            "order": "desc" if query.descending else "asc",
            "rows": [self._row(o, states, now_ns) for o in page],
        }

    def _ordered(
        self, query: StreamQuery, outputs: list[StreamOutput], version: object
    ) -> list[StreamOutput]:
        """The matching streams in sort order.

        Reused, while neither the configuration nor the counter sample changed (so for at
        most `min_interval_s`), by every request for the same view: the page polling every
        second, other pages of it, other browsers.  The rows' values are always read fresh;
        only the order of live columns (age, counts, state) may be that old.
        """
        key = (query.filter, query.topic, query.state, query.sort, query.descending)
        stamp = (version, self._samples)
        if version is not None:
            cached = self._orders.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        rows = self._filter_and_sort(query, outputs)
        if version is not None:
            if len(self._orders) >= 16:
                self._orders.clear()
            self._orders[key] = (stamp, rows)
        return rows

    def _filter_and_sort(
        self, query: StreamQuery, outputs: list[StreamOutput]
    ) -> list[StreamOutput]:
        rows = outputs
        # Plain comprehensions over the snapshot: at 100,000 streams every per-row call
        # counts, so nothing is computed for a row that a filter drops or a page skips.
        if query.filter:
            channel_ok = compile_pattern(query.filter)
            rows = [o for o in rows if channel_ok(o.spec.channel)]
        if query.topic:
            topic_ok = compile_pattern(query.topic)
            rows = [o for o in rows if topic_ok(o.spec.topic)]
        if query.state:
            selected = self._in_state(query.state)
            rows = [o for o in rows if o in selected]
        key = SORT_COLUMNS[query.sort]
        if query.sort == "state":
            states = self._states()
            key = lambda o: states.get(o, ConnectionState.UNKNOWN).name  # noqa: E731
        elif query.sort == "rate":

            def key(o: StreamOutput) -> float:
                rate = self._rates(o)[0]
                return -1.0 if rate is None else rate

        elif query.sort == "severity":
            alarm = self._alarm
            key = lambda o: alarm(o)[0]  # noqa: E731
        elif query.sort == "shard":
            shard = self.shard_of
            if shard is None:
                raise QueryError("sort by shard needs a clustered forwarder (--group)")
            key = lambda o: shard(o.spec.channel)  # noqa: E731
        elif query.sort == "preview":
            if len(rows) > MAX_PREVIEW_SORT:
                raise QueryError(
                    f"sorting by preview needs at most {MAX_PREVIEW_SORT} matching streams "
                    f"({len(rows)} match): narrow the filter"
                )
            key = self._preview
        assert key is not None
        # Stable: ties keep the configuration order (in both directions).
        return sorted(rows, key=key, reverse=query.descending)

    def _states(self) -> dict[StreamOutput, ConnectionState]:
        """Connection state of every stream attached to a channel."""
        states: dict[StreamOutput, ConnectionState] = {}
        for ch in list(self.core.channels.values()):
            state = ch.connection
            for out in ch.outputs:
                states[out] = state
        return states

    def _in_state(self, state: str) -> set[StreamOutput]:
        """The streams in `state` (or with a problem), without visiting every stream: only
        the channels in that state, and the dropping streams only when the process drop
        counters moved (every per-stream drop is also counted there: the core counts
        its own, the sink counts what it refuses)."""
        channels = list(self.core.channels.values())
        selected: set[StreamOutput] = set()
        if state != "PROBLEM":
            want = ConnectionState[state]
            for ch in channels:
                if ch.connection is want:
                    selected.update(ch.outputs)
            return selected
        for ch in channels:
            if ch.connection is not ConnectionState.CONNECTED:
                selected.update(ch.outputs)
        prev, cur = self._previous, self._current
        if prev is not None and cur is not None and _dropped_total(prev) != _dropped_total(cur):
            before = prev.streams
            for out, (_fwd, dropped) in cur.streams.items():
                old = before.get(out)
                if old is not None and dropped > old[1]:
                    selected.add(out)
        return selected

    def _states_of(self, outs: list[StreamOutput]) -> dict[StreamOutput, ConnectionState]:
        channels = self.core.channels
        states = {}
        for out in outs:
            ch = channels.get((out.spec.protocol, out.spec.channel))
            if ch is not None:
                states[out] = ch.connection
        return states

    def _problem(
        self, out: StreamOutput, states: Mapping[StreamOutput, ConnectionState]
    ) -> str | None:
        """Why a row stands out on the page (None: healthy)."""
        state = states.get(out, ConnectionState.UNKNOWN)
        if state is ConnectionState.NEVER_CONNECTED:
            return "never_connected"
        if state is not ConnectionState.CONNECTED:
            return "disconnected"
        if self._rates(out)[1] > 0:
            return "dropping"
        return None

    def _row(
        self, out: StreamOutput, states: Mapping[StreamOutput, ConnectionState], now_ns: int
    ) -> dict[str, Any]:
        spec = out.spec
        severity, status = self._alarm(out)
        last = out.last_update_ns
        rate, drop_rate = self._rates(out)
        return {
            "channel": spec.channel,
            "protocol": spec.protocol.name,
            "schema": spec.schema,
            "topic": spec.topic,
            "periodic": spec.periodic,
            "state": states.get(out, ConnectionState.UNKNOWN).name,
            "last_update_ms": last // 1_000_000 if last else None,
            "age_s": round(max(0.0, (now_ns - last) / 1e9), 3) if last else None,
            "rate": None if rate is None else round(rate, 3),
            "forwarded": out.forwarded,
            "dropped": out.dropped,
            "drop_rate": round(drop_rate, 3),
            "severity": _severity_name(severity),
            "alarm_status": status if severity >= 0 else None,
            "preview": self._preview(out),
            "problem": self._problem(out, states),
            "shard": None if self.shard_of is None else self.shard_of(spec.channel),
        }

    def _alarm(self, out: StreamOutput) -> tuple[int, str]:
        """(EPICS severity, status) of the stream: what its al00 messages said, or for f142
        (which sends no al00: the alarm is inside every value message) what its last value
        message says.  -1 when nothing is known."""
        if out.spec.schema != "f142" or out.last_value is None:
            return out.alarm_state
        payload = out.last_value
        cached = self._f142_alarms.get(out)
        if cached is not None and cached[0] is payload:
            return cached[1]
        try:
            alarm = f142_alarm(payload)
        except Exception:  # noqa: BLE001 - a page must never fail on one message
            alarm = out.alarm_state
        if len(self._f142_alarms) > 4 * MAX_PREVIEW_SORT:
            self._f142_alarms.clear()
        self._f142_alarms[out] = (payload, alarm)
        return alarm

    def _preview(self, out: StreamOutput) -> str:
        payload = out.last_value
        if payload is None:
            return ""
        cached = self._previews.get(out)
        if cached is not None and cached[0] is payload:
            return cached[1]
        text = preview_payload(payload)
        if len(self._previews) > 4 * MAX_PREVIEW_SORT:
            self._previews.clear()  # bounded: removed streams must not pile up
        self._previews[out] = (payload, text)
        return text

    def summary(self) -> dict[str, Any]:
        """Stream counts by state, process counters and their rates per second."""
        with self._lock:
            outputs = self._outputs()
            self._sample(outputs)
            by_state = {s.name: 0 for s in ConnectionState}
            attached = 0
            for ch in list(self.core.channels.values()):
                n = len(ch.outputs)
                by_state[ch.connection.name] += n
                attached += n
            by_state["UNKNOWN"] += max(0, len(outputs) - attached)
            prev, cur = self._previous, self._current
            assert cur is not None
            rates: dict[str, float] | None = None
            if prev is not None:
                dt = cur.t - prev.t
                rates = {
                    k: round((v - prev.process.get(k, 0)) / dt, 3) for k, v in cur.process.items()
                }
            c = self.counters
            return {
                "streams": {
                    "configured": len(outputs),
                    "connected": by_state["CONNECTED"],
                    "never_connected": by_state["NEVER_CONNECTED"],
                    "disconnected": len(outputs)
                    - by_state["CONNECTED"]
                    - by_state["NEVER_CONNECTED"],
                    "by_state": {k: v for k, v in by_state.items() if v},
                },
                "pvs": len(self.core.channels),
                "counters": c.as_dict(),
                "rates": None
                if rates is None
                else {
                    "updates_received": rates["updates_received"],
                    "updates_forwarded": rates["updates_forwarded"],
                    "messages_produced": rates["messages_produced"],
                    "resends": rates["resends"],
                    "dropped": {d.value: rates["dropped:" + d.value] for d in Drop},
                },
                "rate_interval_s": None if prev is None else round(cur.t - prev.t, 3),
            }


def _dropped_total(sample: _Sample) -> int:
    return sum(n for k, n in sample.process.items() if k.startswith("dropped:"))


def _severity_name(severity: int) -> str | None:
    if severity < 0:
        return None
    try:
        return Severity(severity).name
    except ValueError:
        return str(severity)


def preview_payload(payload: bytes, limit: int = PREVIEW_CHARS) -> str:
    """A short text of the value inside a stored value message (f144, tdct, ...)."""
    from streaming_data_types import DESERIALISERS

    schema = payload[4:8].decode("ascii", "replace")
    if schema == "f142":
        try:
            return format_value(_f142_value(payload), limit)
        except Exception:  # noqa: BLE001 - a preview must never fail a page
            return f"{schema} ({len(payload)} bytes)"
    decode = DESERIALISERS.get(schema)
    if decode is None:
        return f"{schema} ({len(payload)} bytes)"
    try:
        decoded = decode(payload)
    except Exception:  # noqa: BLE001 - a preview must never fail a page
        return f"{schema} ({len(payload)} bytes)"
    for field in ("value", "timestamps", "values", "data"):
        if hasattr(decoded, field):
            return format_value(getattr(decoded, field), limit)
    if hasattr(decoded, "severity"):  # al00 streams
        text = f"{getattr(decoded.severity, 'name', decoded.severity)} {decoded.message}"
        return format_value(text.strip(), limit)
    if hasattr(decoded, "status"):  # ep01 streams
        return format_value(getattr(decoded.status, "name", decoded.status), limit)
    return f"{schema} ({len(payload)} bytes)"


def _f142_value(payload: bytes) -> Any:
    """The value of an f142 (LogData) message, read with the schema's generated classes.

    Not `deserialise_f142`: streaming_data_types 0.27 (the newest) looks up `np.unicode_`
    there, which NumPy 2 removed, so it fails for every scalar.  The generated table
    classes only read the buffer.
    """
    from streaming_data_types.fbschemas.logdata_f142.LogData import LogData

    log_data = LogData.GetRootAsLogData(payload, 0)
    member = _f142_members().get(log_data.ValueType())
    table = log_data.Value()
    if member is None or table is None:
        raise ValueError("f142 message without a value")
    value = member()
    value.Init(table.Bytes, table.Pos)
    if hasattr(value, "ValueAsNumpy"):  # numeric arrays
        return value.ValueAsNumpy()
    if hasattr(value, "ValueLength"):  # ArrayString: no numpy view
        return np.array([value.Value(i) for i in range(value.ValueLength())])
    return value.Value()  # scalars and String


#: f142 AlarmSeverity (MINOR=0, MAJOR=1, NO_ALARM=2, INVALID=3) -> EPICS severity.
_F142_SEVERITY_TO_EPICS = {0: 1, 1: 2, 2: 0, 3: 3}


def f142_alarm(payload: bytes) -> tuple[int, str]:
    """(EPICS severity, status name) carried in an f142 message, as the page shows alarms
    of other schemas (severity 0..3, CA's condition name; a "NO_CHANGE" is -1)."""
    from streaming_data_types.fbschemas.logdata_f142.LogData import LogData

    log_data = LogData.GetRootAsLogData(payload, 0)
    severity = _F142_SEVERITY_TO_EPICS.get(log_data.Severity(), -1)
    status = _f142_status_names().get(log_data.Status(), str(log_data.Status()))
    return severity, "" if severity < 0 else status


@functools.cache
def _f142_status_names() -> dict[int, str]:
    from streaming_data_types.fbschemas.logdata_f142.AlarmStatus import AlarmStatus

    return {v: k for k, v in vars(AlarmStatus).items() if isinstance(v, int)}


@functools.cache
def _f142_members() -> dict[int, type]:
    """f142's Value union: member number -> generated table class (the module and class
    are named after the member, e.g. `logdata_f142.ArrayDouble.ArrayDouble`)."""
    from streaming_data_types.fbschemas.logdata_f142.Value import Value

    members: dict[int, type] = {}
    for name, number in vars(Value).items():
        if name.startswith("_") or name == "NONE" or not isinstance(number, int):
            continue
        module = importlib.import_module(f"streaming_data_types.fbschemas.logdata_f142.{name}")
        members[number] = getattr(module, name)
    return members


def format_value(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """Scalars as text, arrays as their first elements and length, cut to `limit`."""
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) > 0:
        items = value.ravel()
        n = len(items)
        parts: list[str] = []
        used = 0
        for item in items[:32]:
            text = _scalar(item)
            used += len(text) + 2
            if used > limit - 12:
                break
            parts.append(text)
        more = ", …" if len(parts) < n else ""
        text = "[" + ", ".join(parts) + more + f"] ({n})"
    else:
        text = _scalar(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _scalar(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
