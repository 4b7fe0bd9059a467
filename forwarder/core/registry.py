"""The set of configured streams and how config commands change it.

The registry only computes *what* changed; the app turns a `Change` into started and stopped
monitors.  Streams are kept in a dict keyed by `StreamSpec.key` (insertion ordered), so an
ADD of many streams costs one dict operation each, whatever the size of the configuration.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from forwarder.core.config_messages import ConfigCommand, UpdateKind
from forwarder.core.streams import Protocol, StreamFilter, StreamSpec

_Key = tuple[str, str, str, Protocol]


@dataclass
class Change:
    """What `StreamRegistry.apply` did.

    `updated` holds the new specs of streams whose periodic flag changed: their monitors can
    keep running, only the re-send behaviour differs.
    """

    added: list[StreamSpec] = field(default_factory=list)
    removed: list[StreamSpec] = field(default_factory=list)
    updated: list[StreamSpec] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """Matcher for one channel/topic pattern.

    Only `?` and `*` are special; everything else (including `[`, `]`, `.`) is literal, so
    PV names with brackets can be removed by their exact name.  Patterns without wildcards
    use plain equality, which is both faster and obviously correct.
    """
    if not pattern:
        return _match_all
    if "*" not in pattern and "?" not in pattern:
        return pattern.__eq__
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    regex = re.compile("".join(parts), re.DOTALL)
    return lambda text: regex.fullmatch(text) is not None


def _match_all(_text: str) -> bool:
    return True


@functools.lru_cache(maxsize=1024)
def compile_filter(stream_filter: StreamFilter) -> Callable[[StreamSpec], bool]:
    """Build the predicate once per filter, so REMOVE over many streams stays linear."""
    channel_ok = compile_pattern(stream_filter.channel)
    topic_ok = compile_pattern(stream_filter.topic)
    schema = stream_filter.schema

    def predicate(spec: StreamSpec) -> bool:
        return (
            (not schema or spec.schema == schema)
            and channel_ok(spec.channel)
            and topic_ok(spec.topic)
        )

    return predicate


def matches(stream_filter: StreamFilter, spec: StreamSpec) -> bool:
    """Whether a REMOVE filter selects `spec` (empty fields match anything, protocol ignored)."""
    return compile_filter(stream_filter)(spec)


class StreamRegistry:
    """Configured streams in insertion order; not thread-safe (one config thread owns it)."""

    def __init__(self) -> None:
        self._streams: dict[_Key, StreamSpec] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, spec: object) -> bool:
        return isinstance(spec, StreamSpec) and self._streams.get(spec.key) == spec

    def streams(self) -> list[StreamSpec]:
        return list(self._streams.values())

    def apply(self, command: ConfigCommand) -> Change:
        """Apply a decoded command and report the difference."""
        if command.kind is UpdateKind.ADD:
            return self._add(command.streams)
        if command.kind is UpdateKind.REMOVE:
            return self._remove(command.filters)
        if command.kind is UpdateKind.REMOVEALL:
            removed = list(self._streams.values())
            self._streams.clear()
            return Change(removed=removed)
        if command.kind is UpdateKind.REPLACE:
            return self._replace(command.streams)
        raise ValueError(f"unsupported update kind {command.kind!r}")

    def _add(self, streams: list[StreamSpec]) -> Change:
        change = Change()
        for spec in _by_key(streams).values():
            existing = self._streams.get(spec.key)
            if existing is None:
                change.added.append(spec)
            elif existing.periodic != spec.periodic:
                change.updated.append(spec)
            else:
                continue
            self._streams[spec.key] = spec  # an existing key keeps its position
        return change

    def _remove(self, filters: list[StreamFilter]) -> Change:
        if not filters:
            return Change()
        predicates = [compile_filter(f) for f in dict.fromkeys(filters)]
        kept: dict[_Key, StreamSpec] = {}
        removed: list[StreamSpec] = []
        for key, spec in self._streams.items():
            if any(p(spec) for p in predicates):
                removed.append(spec)
            else:
                kept[key] = spec
        self._streams = kept
        return Change(removed=removed)

    def _replace(self, streams: list[StreamSpec]) -> Change:
        """Make the configuration exactly `streams`; survivors keep their order and monitors."""
        target = _by_key(streams)
        change = Change()
        result: dict[_Key, StreamSpec] = {}
        for key, spec in self._streams.items():
            wanted = target.get(key)
            if wanted is None:
                change.removed.append(spec)
                continue
            if wanted.periodic != spec.periodic:
                change.updated.append(wanted)
            result[key] = wanted
        for key, spec in target.items():
            if key not in result:
                change.added.append(spec)
                result[key] = spec
        self._streams = result
        return change


def _by_key(streams: list[StreamSpec]) -> dict[_Key, StreamSpec]:
    """Collapse repeats within one command: first position, last periodic flag wins."""
    return {spec.key: spec for spec in streams}
