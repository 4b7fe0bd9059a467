"""The operator web page and its JSON API, served next to `/metrics` on `--http-port`.

Routes (all answers carry a strict Content-Security-Policy; the page loads nothing from
elsewhere):

* `GET /` the page; `GET /static/app.js`, `/static/app.css` its script and style.
* `GET /api/summary` service, counts, rates; `GET /api/streams?...` one page of streams
  (see `forwarder.core.stream_table.StreamQuery`).
* `POST /api/streams` (ADD) and `POST /api/streams/remove` (REMOVE): only with
  `--http-admin-token`, sent as `Authorization: Bearer <token>`.  A change is not applied
  here: it is encoded as an fc00 message and produced to the config topic, so the storage
  topic, the status and every other forwarder reading that topic see the same change.

`WebUi.handle` is plain request-in, response-out, so the API is tested without a socket.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl

from forwarder.core.config_messages import (
    ConfigMessageError,
    UpdateKind,
    decode_config_message,
    encode_config_message,
)
from forwarder.core.stream_table import QueryError, StreamQuery, StreamTable
from forwarder.core.streams import STREAM_SCHEMAS, Protocol, StreamFilter, StreamSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Nothing but our own files; no inline script or style, no framing, no form posts.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
#: Largest accepted request body and stream count of one change.
MAX_BODY_BYTES = 1 << 20
MAX_STREAMS_PER_REQUEST = 10_000
_FIELD_CHARS = 1000
#: The broker check behind the summary's `broker_reachable` runs at most this often,
#: in the background, so a page poll never waits for an unreachable broker.
BROKER_CHECK_INTERVAL_S = 5.0


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class PublishError(RuntimeError):
    """The config message could not be delivered (HTTP 503)."""


@dataclass
class ServiceInfo:
    """What the summary says about the process itself."""

    version: str
    service_id: str
    host: str
    started_at: float
    config_topic: str
    queue_length: Callable[[], int]
    broker_reachable: Callable[[], bool]
    #: Extra summary sections (e.g. cluster membership), each returning JSON-able data.
    extras: dict[str, Callable[[], Any]] = field(default_factory=dict)


class BackgroundValue(Generic[T]):
    """A slow lookup (a broker check, a read of the status topic) answered from cache.

    `get()` returns at once: the last value (None before the first lookup finished), and
    when that is older than `interval_s` it starts one background refresh.  So a page poll
    never waits for an unreachable broker, and nothing is looked up while nobody asks.
    """

    def __init__(self, lookup: Callable[[], T], interval_s: float, failed: T | None = None) -> None:
        self._lookup = lookup
        self._interval_s = interval_s
        self._failed = failed
        self._value: T | None = None
        self._checked = -1e18
        self._running = False
        self._lock = threading.Lock()

    def get(self) -> T | None:
        with self._lock:
            stale = time.monotonic() - self._checked >= self._interval_s
            if stale and not self._running:
                self._running = True
                threading.Thread(target=self._refresh, name="web-lookup", daemon=True).start()
            return self._value

    def _refresh(self) -> None:
        try:
            value: T | None = self._lookup()
        except Exception as err:  # noqa: BLE001 - a failed lookup is shown, not raised
            log.debug("web page lookup failed: %s", err)
            value = self._failed
        with self._lock:
            self._value = value
            self._checked = time.monotonic()
            self._running = False


class WebUi:
    """Routes page and API requests; `publish` sends a config message (None: read-only)."""

    def __init__(
        self,
        table: StreamTable,
        info: ServiceInfo,
        admin_token: str | None = None,
        publish: Callable[[bytes], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.table = table
        self._on_close = on_close
        self.info = info
        self._token = admin_token.encode() if admin_token else None
        self._publish = publish
        self._broker = BackgroundValue(info.broker_reachable, BROKER_CHECK_INTERVAL_S, False)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    @property
    def writable(self) -> bool:
        return self._token is not None and self._publish is not None

    def handles(self, path: str) -> bool:
        return path in _STATIC or path.startswith("/api/") or path == "/favicon.ico"

    def handle(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        client: str = "",
    ) -> Response:
        """Answer one request; never raises (a bug answers 500 with a JSON error)."""
        path, _, query = target.partition("?")
        try:
            response = self._route(method, path, query, headers, body, client)
        except _HttpError as err:
            response = _error(err.status, err.message)
        except Exception:  # noqa: BLE001 - the page shows the error and keeps its data
            log.exception("web request %s %s failed", method, path)
            response = _error(500, "internal error (see the forwarder's log)")
        response.headers = {**SECURITY_HEADERS, **response.headers}
        return response

    def _route(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        client: str,
    ) -> Response:
        if path == "/favicon.ico":
            return Response(204, b"", "image/x-icon")
        if path in _STATIC:
            if method not in ("GET", "HEAD"):
                raise _HttpError(405, f"{method} not allowed on {path}")
            name, ctype = _STATIC[path]
            return Response(200, _static(name), ctype)
        if path == "/api/summary":
            _only(method, "GET", path)
            return _json(200, self.summary())
        if path == "/api/streams" and method == "GET":
            try:
                params = dict(parse_qsl(query, keep_blank_values=True))
                result = self.table.streams(StreamQuery.from_params(params))
            except QueryError as err:
                raise _HttpError(400, str(err)) from None
            return _json(200, result)
        if path in ("/api/streams", "/api/streams/remove"):
            _only(method, "POST", path)
            self._authorise(headers)
            payload = _json_body(headers, body)
            kind: UpdateKind
            items: list[StreamSpec] | list[StreamFilter]
            if path == "/api/streams":
                kind, items = UpdateKind.ADD, _stream_specs(payload)
            else:
                kind, items = UpdateKind.REMOVE, _stream_filters(payload)
            return self._send(kind, items, client)
        raise _HttpError(404, f"no such page: {path}")

    def summary(self) -> dict[str, Any]:
        info = self.info
        result: dict[str, Any] = {
            "version": info.version,
            "service_id": info.service_id,
            "host": info.host,
            "uptime_s": round(time.time() - info.started_at, 1),
            "broker_reachable": self._broker.get(),
            "producer_queue_length": info.queue_length(),
            "config_topic": info.config_topic,
            "writable": self.writable,
            "schemas": list(STREAM_SCHEMAS),
            "protocols": [p.name for p in Protocol],
            "time_ms": int(time.time() * 1000),
        }
        result.update(self.table.summary())
        for name, extra in info.extras.items():
            try:
                result[name] = extra()
            except Exception as err:  # noqa: BLE001 - an optional section must not fail all
                result[name] = {"error": str(err)}
        return result

    def _authorise(self, headers: Mapping[str, str]) -> None:
        """Bearer token in a header (never a cookie: a cross-site page cannot send it)."""
        if not self.writable:
            raise _HttpError(
                403, "read-only: start the forwarder with --http-admin-token to allow changes"
            )
        assert self._token is not None
        sent = _header(headers, "Authorization")
        scheme, _, token = sent.partition(" ")
        # http.server decodes header bytes as latin-1: encoding back gives the bytes sent.
        given = token.strip().encode("latin-1", "replace") if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, self._token):
            raise _HttpError(403, "missing or wrong admin token")

    def _send(
        self, kind: UpdateKind, items: list[StreamSpec] | list[StreamFilter], client: str
    ) -> Response:
        payload = encode_config_message(kind, items, "fc00")
        # The forwarder's own decoder is the judge: what it would reject is a 400 here.
        try:
            command = decode_config_message(payload, rf5k_periodic=False)
        except ConfigMessageError as err:
            raise _HttpError(400, str(err)) from None
        if command.rejected:
            raise _HttpError(400, "; ".join(command.rejected))
        assert self._publish is not None
        try:
            self._publish(payload)
        except PublishError as err:
            raise _HttpError(503, f"config topic did not take the change: {err}") from None
        log.info(
            "Web page (%s) sent %s of %d stream(s) to the config topic",
            client or "?",
            kind.name,
            len(items),
        )
        return _json(202, {"sent": kind.name, "count": len(items)})


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _only(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise _HttpError(405, f"{method} not allowed on {path} (use {allowed})")


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def _json(status: int, doc: Any) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":")).encode())


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


_static_cache: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    data = _static_cache.get(name)
    if data is None:
        data = resources.files("forwarder.adapters").joinpath("web", name).read_bytes()
        _static_cache[name] = data
    return data


def _json_body(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    ctype = _header(headers, "Content-Type").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise _HttpError(415, "send the change as Content-Type: application/json")
    if len(body) > MAX_BODY_BYTES:
        raise _HttpError(413, f"request larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise _HttpError(400, f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise _HttpError(400, "body must be a JSON object")
    return doc


def _items(doc: dict[str, Any], name: str, allowed: set[str]) -> list[dict[str, Any]]:
    items = doc.get(name)
    if not isinstance(items, list) or not items:
        raise _HttpError(400, f"body needs a non-empty list {name!r}")
    if len(items) > MAX_STREAMS_PER_REQUEST:
        raise _HttpError(400, f"at most {MAX_STREAMS_PER_REQUEST} {name} per request")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _HttpError(400, f"{name}[{i}] must be an object")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise _HttpError(
                400, f"{name}[{i}]: unknown field {unknown[0]!r} (allowed: {sorted(allowed)})"
            )
        for key in allowed - {"periodic"}:
            value = item.get(key, "")
            if not isinstance(value, str):
                raise _HttpError(400, f"{name}[{i}].{key} must be a string")
            if len(value) > _FIELD_CHARS:
                raise _HttpError(400, f"{name}[{i}].{key} longer than {_FIELD_CHARS} characters")
    return items


def _stream_specs(doc: dict[str, Any]) -> list[StreamSpec]:
    specs = []
    allowed = {"channel", "schema", "topic", "protocol", "periodic"}
    for i, item in enumerate(_items(doc, "streams", allowed)):
        missing = [k for k in ("channel", "schema", "topic", "protocol") if not item.get(k)]
        if missing:
            raise _HttpError(400, f"streams[{i}] needs {', '.join(missing)}")
        try:
            protocol = Protocol.parse(item["protocol"])
        except ValueError as err:
            raise _HttpError(400, f"streams[{i}]: {err}") from None
        periodic = item.get("periodic", False)
        if not isinstance(periodic, bool):
            raise _HttpError(400, f"streams[{i}].periodic must be true or false")
        specs.append(StreamSpec(item["channel"], item["schema"], item["topic"], protocol, periodic))
    return specs


def _stream_filters(doc: dict[str, Any]) -> list[StreamFilter]:
    filters = []
    for i, item in enumerate(_items(doc, "filters", {"channel", "schema", "topic"})):
        f = StreamFilter(item.get("channel", ""), item.get("schema", ""), item.get("topic", ""))
        if not (f.channel or f.schema or f.topic):
            raise _HttpError(400, f"filters[{i}] needs at least one of channel, schema, topic")
        filters.append(f)
    return filters
