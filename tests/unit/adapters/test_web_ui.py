"""The web page's HTTP API as plain request-in, response-out (no sockets, no broker)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from forwarder.adapters.web_ui import (
    CONTENT_SECURITY_POLICY,
    PublishError,
    ServiceInfo,
    WebUi,
)
from forwarder.core.config_messages import UpdateKind, decode_config_message
from forwarder.core.forwarding import ForwardingCore, Subscribers
from forwarder.core.stream_table import StreamTable
from forwarder.core.streams import Protocol, StreamFilter, StreamSpec
from forwarder.core.timestamps import TimestampPolicy

TOKEN = "correct horse battery staple"
JSON = {"Content-Type": "application/json"}


class Sink:
    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        return True


class Published:
    """Collects what the web UI would produce to the config topic."""

    def __init__(self, fail: str = "") -> None:
        self.payloads: list[bytes] = []
        self.fail = fail

    def __call__(self, payload: bytes) -> None:
        if self.fail:
            raise PublishError(self.fail)
        self.payloads.append(payload)


def make(token: str | None = TOKEN, fail: str = "") -> tuple[WebUi, ForwardingCore, Published]:
    core = ForwardingCore(
        sink=Sink(),
        policy=TimestampPolicy(),
        service_id="web",
        subscribers=Subscribers(lambda p, n, c: n, lambda s: None),
    )
    info = ServiceInfo(
        version="9.9",
        service_id="fwd-1",
        host="here",
        started_at=time.time() - 5,
        config_topic="cfg",
        queue_length=lambda: 3,
        broker_reachable=lambda: True,
    )
    published = Published(fail)
    web = WebUi(StreamTable(core, core.counters), info, admin_token=token, publish=published)
    return web, core, published


def auth(token: str = TOKEN) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer {token}"}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def reply_json(reply: Any) -> Any:
    return json.loads(reply.body)


def test_page_and_assets_are_served_with_a_strict_policy() -> None:
    web, _, _ = make()
    for path, ctype in [
        ("/", "text/html"),
        ("/static/app.js", "text/javascript"),
        ("/static/app.css", "text/css"),
    ]:
        reply = web.handle("GET", path, {})
        assert reply.status == 200 and reply.content_type.startswith(ctype)
        assert reply.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
    page = web.handle("GET", "/", {}).body.decode()
    # Nothing from elsewhere, nothing inline.
    assert "http://" not in page and "https://" not in page
    assert "<script>" not in page and "style=" not in page
    script = web.handle("GET", "/static/app.js", {}).body.decode()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_summary_and_streams() -> None:
    web, core, _ = make()
    core.add_stream(StreamSpec("IOC:T", "f144", "t", Protocol.CA))
    summary = reply_json(web.handle("GET", "/api/summary", {}))
    assert summary["version"] == "9.9" and summary["service_id"] == "fwd-1"
    assert summary["writable"] is True and summary["producer_queue_length"] == 3
    assert summary["streams"]["configured"] == 1 and summary["uptime_s"] >= 5
    assert "f144" in summary["schemas"] and "CA" in summary["protocols"]
    streams = reply_json(web.handle("GET", "/api/streams?filter=IOC:*&sort=rate&order=desc", {}))
    assert [r["channel"] for r in streams["rows"]] == ["IOC:T"]


def test_bad_query_is_400_with_reason() -> None:
    web, _, _ = make()
    reply = web.handle("GET", "/api/streams?sort=colour", {})
    assert reply.status == 400 and "cannot sort by 'colour'" in reply_json(reply)["error"]
    assert web.handle("GET", "/api/nothing", {}).status == 404
    assert web.handle("DELETE", "/api/summary", {}).status == 405
    assert web.handle("POST", "/", {}).status == 405


def test_add_is_encoded_as_a_config_message() -> None:
    web, core, published = make()
    streams = [
        {"channel": "IOC:A", "protocol": "ca", "schema": "f144", "topic": "data"},
        {"channel": "IOC:B", "protocol": "PVA", "schema": "tdct", "topic": "c", "periodic": True},
    ]
    reply = web.handle("POST", "/api/streams", auth(), body({"streams": streams}))
    assert reply.status == 202, reply.body
    assert reply_json(reply) == {"sent": "ADD", "count": 2}
    (payload,) = published.payloads
    command = decode_config_message(payload, rf5k_periodic=False)
    assert command.kind is UpdateKind.ADD
    assert command.streams == [
        StreamSpec("IOC:A", "f144", "data", Protocol.CA, False),
        StreamSpec("IOC:B", "tdct", "c", Protocol.PVA, True),
    ]
    assert not core.outputs  # applied only when the forwarder reads the config topic


HOSTILE = "<img src=x onerror=alert(1)>"


def test_a_hostile_name_with_spaces_can_be_added_and_comes_back_as_plain_json() -> None:
    web, core, published = make()
    stream = {"channel": HOSTILE, "protocol": "fake", "schema": "f144", "topic": "t"}
    reply = web.handle("POST", "/api/streams", auth(), body({"streams": [stream]}))
    assert reply.status == 202, reply.body
    (spec,) = decode_config_message(published.payloads[0], rf5k_periodic=False).streams
    assert spec == StreamSpec(HOSTILE, "f144", "t", Protocol.FAKE)
    filters = body({"filters": [{"channel": "<img src=x *"}]})
    reply = web.handle("POST", "/api/streams/remove", auth(), filters)
    assert reply.status == 202, reply.body
    command = decode_config_message(published.payloads[1], rf5k_periodic=False)
    assert command.filters == [StreamFilter("<img src=x *", "", "")]

    core.add_stream(spec)
    reply = web.handle("GET", "/api/streams?filter=%3Cimg%20src%3Dx%20*", {})
    assert reply.content_type.startswith("application/json")
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert [r["channel"] for r in reply_json(reply)["rows"]] == [HOSTILE]


def test_remove_is_encoded_with_wildcards() -> None:
    web, _, published = make()
    filters = [{"channel": "IOC:*", "topic": "data"}, {"schema": "tdct"}]
    reply = web.handle("POST", "/api/streams/remove", auth(), body({"filters": filters}))
    assert reply.status == 202, reply.body
    command = decode_config_message(published.payloads[0], rf5k_periodic=False)
    assert command.kind is UpdateKind.REMOVE
    assert command.filters == [StreamFilter("IOC:*", "", "data"), StreamFilter("", "tdct", "")]


def test_without_token_configured_writes_are_403() -> None:
    web, _, published = make(token=None)
    add = body({"streams": [{"channel": "A", "protocol": "ca", "schema": "f144", "topic": "t"}]})
    for headers in (JSON, auth()):
        reply = web.handle("POST", "/api/streams", headers, add)
        assert reply.status == 403
        assert "read-only" in reply_json(reply)["error"]
    assert reply_json(web.handle("GET", "/api/summary", {}))["writable"] is False
    assert published.payloads == []


@pytest.mark.parametrize(
    "headers",
    [
        JSON,
        auth("wrong"),
        auth(TOKEN + "x"),
        auth(""),
        {**JSON, "Authorization": TOKEN},  # no scheme
        {**JSON, "Authorization": f"Basic {TOKEN}"},
        {**JSON, "Cookie": f"token={TOKEN}"},
    ],
)
def test_wrong_or_missing_token_is_403(headers: dict[str, str]) -> None:
    web, _, published = make()
    filters = body({"filters": [{"channel": "A"}]})
    reply = web.handle("POST", "/api/streams/remove", headers, filters)
    assert reply.status == 403
    assert TOKEN not in reply.body.decode()
    assert published.payloads == []


@pytest.mark.parametrize(
    ("path", "doc", "message"),
    [
        ("/api/streams", {}, "non-empty list 'streams'"),
        ("/api/streams", {"streams": []}, "non-empty list 'streams'"),
        ("/api/streams", {"streams": ["x"]}, "streams[0] must be an object"),
        (
            "/api/streams",
            {"streams": [{"channel": "A"}]},
            "streams[0] needs schema, topic, protocol",
        ),
        (
            "/api/streams",
            {"streams": [{"channel": "A", "protocol": "xx", "schema": "f144", "topic": "t"}]},
            "unknown protocol 'xx'",
        ),
        (
            "/api/streams",
            {"streams": [{"channel": "A", "protocol": "ca", "schema": "nope", "topic": "t"}]},
            "schema must be one of",
        ),
        (
            "/api/streams",
            {"streams": [{"channel": "A", "protocol": "ca", "schema": "f144", "topic": "a b"}]},
            "not a legal Kafka topic name",
        ),
        (
            "/api/streams",
            {
                "streams": [
                    {"channel": "<img\nsrc=x>", "protocol": "ca", "schema": "f144", "topic": "t"}
                ]
            },
            "channel contains control characters",
        ),
        (
            "/api/streams",
            {"streams": [{"channel": 5, "protocol": "ca", "schema": "f144", "topic": "t"}]},
            "streams[0].channel must be a string",
        ),
        (
            "/api/streams",
            {
                "streams": [
                    {
                        "channel": "A",
                        "protocol": "ca",
                        "schema": "f144",
                        "topic": "t",
                        "periodic": "yes",
                    }
                ]
            },
            "periodic must be true or false",
        ),
        (
            "/api/streams",
            {"streams": [{"channel": "A", "colour": "red"}]},
            "unknown field 'colour'",
        ),
        ("/api/streams/remove", {"filters": [{}]}, "needs at least one of channel"),
        ("/api/streams/remove", {"filters": [{"channel": "x" * 5000}]}, "longer than"),
        ("/api/streams/remove", [1, 2], "must be a JSON object"),
    ],
)
def test_bad_changes_are_400_with_reason(path: str, doc: Any, message: str) -> None:
    web, _, published = make()
    reply = web.handle("POST", path, auth(), body(doc))
    assert reply.status == 400, reply.body
    assert message in reply_json(reply)["error"]
    assert published.payloads == []


def test_body_must_be_json() -> None:
    web, _, _ = make()
    reply = web.handle("POST", "/api/streams", auth(), b"{not json")
    assert reply.status == 400 and "not valid JSON" in reply_json(reply)["error"]
    form = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Bearer {TOKEN}"}
    assert web.handle("POST", "/api/streams", form, b"a=b").status == 415


def test_an_undelivered_change_is_503() -> None:
    web, _, _ = make(fail="broker down")
    filters = body({"filters": [{"channel": "A"}]})
    reply = web.handle("POST", "/api/streams/remove", auth(), filters)
    assert reply.status == 503 and "broker down" in reply_json(reply)["error"]


def test_a_bug_answers_500_json_not_a_traceback() -> None:
    web, _, _ = make()

    def broken() -> int:
        raise RuntimeError("boom")

    web.info.queue_length = broken
    reply = web.handle("GET", "/api/summary", {})
    assert reply.status == 500 and "internal error" in reply_json(reply)["error"]
    assert reply.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_summary_carries_extra_sections_such_as_the_cluster() -> None:
    web, _, _ = make()
    web.info.extras["cluster"] = lambda: {"group": "g1", "shards": [0, 2]}

    def broken() -> Any:
        raise RuntimeError("membership gone")

    web.info.extras["other"] = broken
    summary = reply_json(web.handle("GET", "/api/summary", {}))
    assert summary["cluster"] == {"group": "g1", "shards": [0, 2]}
    assert summary["other"] == {"error": "membership gone"}


def test_background_value_never_makes_the_caller_wait() -> None:
    import threading

    from forwarder.adapters.web_ui import BackgroundValue

    release = threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        release.wait(10)
        return 42

    value = BackgroundValue(slow, interval_s=60.0)
    started = time.monotonic()
    assert value.get() is None and value.get() is None  # one lookup running, not two
    assert time.monotonic() - started < 1.0
    release.set()
    deadline = time.monotonic() + 10
    while value.get() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert value.get() == 42 and len(calls) == 1  # fresh for interval_s: no new lookup

    def failing() -> int:
        raise OSError("broker down")

    broken = BackgroundValue(failing, interval_s=60.0, failed=-1)
    broken.get()
    deadline = time.monotonic() + 10
    while broken.get() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert broken.get() == -1
