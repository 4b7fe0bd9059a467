"""Builds the operator web page (`forwarder.adapters.web_ui`) from a running service.

Kept apart from `service.py` so the service only needs one call to get its page.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from forwarder.adapters.web_ui import BackgroundValue, PublishError, ServiceInfo, WebUi
from forwarder.core.stream_table import StreamTable

if TYPE_CHECKING:
    from forwarder.app.service import ForwarderService


def make_web_ui(service: ForwarderService) -> WebUi:
    """Read-only unless the service has an admin token; then changes go to the config topic."""
    settings = service.settings
    config = settings.config_endpoint
    token = settings.http_admin_token.reveal() if settings.http_admin_token else None
    publish = None
    on_close = None
    if token:
        publish, on_close = _config_publisher(config.librdkafka_config(), config.topic or "")
    from forwarder.app.service import process_start_ms

    controller = service.controller
    info = ServiceInfo(
        version=controller.settings.version,
        service_id=settings.service_id,
        host=controller.host,
        started_at=process_start_ms() / 1000,
        config_topic=config.topic or "",
        queue_length=service.sink.queue_length,
        broker_reachable=lambda: service.sink.broker_reachable(timeout_s=2.0),
    )
    shard = None
    cluster = service.cluster
    if cluster is not None:
        from forwarder.core.sharding import shard_of

        count = cluster.membership.shard_count
        status = settings.status_endpoint
        members: BackgroundValue[dict[str, Any] | None] = BackgroundValue(
            lambda: cluster_members(
                status.librdkafka_config(), status.topic or "", cluster.membership.group
            ),
            MEMBERS_INTERVAL_S,
            {"error": "status topic unreadable"},
        )

        def cluster_part() -> dict[str, Any]:
            part = cluster.status(controller.registry.streams, controller.config_version)
            part["view"] = members.get()
            return part

        info.extras["cluster"] = cluster_part

        def shard(channel: str) -> int:
            return shard_of(channel, count)

    return WebUi(
        StreamTable(
            controller.core,
            service.counters,
            config_version=lambda: controller.config_version,
            shard_of=shard,
        ),
        info,
        admin_token=token,
        publish=publish,
        on_close=on_close,
    )


#: How long the broker has to take a change made on the page (librdkafka gives up on the
#: message a little earlier, so a change reported as failed is not delivered later).
PUBLISH_TIMEOUT_S = 6.0
#: One key for every config message, so on a topic of several partitions they keep order.
CONFIG_KEY = b"config"


def _config_publisher(
    config: Mapping[str, Any], topic: str
) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """`publish(payload)`, which returns once the config topic's broker acknowledged the
    message (PublishError otherwise), and `close()`."""
    from forwarder.adapters.kafka_config import DeliveryFailed, TopicWriter

    message_timeout_ms = int((PUBLISH_TIMEOUT_S - 1.0) * 1000)
    writer = TopicWriter({**config, "message.timeout.ms": message_timeout_ms}, topic)

    def publish(payload: bytes) -> None:
        try:
            writer.write_and_wait(payload, CONFIG_KEY, PUBLISH_TIMEOUT_S)
        except DeliveryFailed as err:
            raise PublishError(str(err)) from None

    def close() -> None:
        writer.flush(0.5)

    return publish, close


#: The cluster's members are read from the status topic at most this often (and only while
#: somebody has the page open).
MEMBERS_INTERVAL_S = 5.0
#: Statuses older than this are not read (members publish every --status-interval).
MEMBERS_LOOKBACK_S = 60.0


def cluster_members(config: Mapping[str, Any], topic: str, group: str) -> dict[str, Any] | None:
    """The cluster as its members' newest statuses show it (what `forwarder-config
    status` prints): live members with their shards, stale members, unowned shards.

    A member knows only its own shards; the others are on the status topic, which every
    member writes to."""
    import uuid

    from forwarder.adapters.kafka_config import read_topic
    from forwarder.app.config_cli.status import cluster_views, decode_status

    now_ms = int(time.time() * 1000)
    contents = read_topic(
        {**config, "group.id": f"forwarder-web-{uuid.uuid4().hex[:12]}"},
        topic,
        timeout_s=5.0,
        settle_s=0.0,
        quiet_s=1.0,
        since_ms=now_ms - int(MEMBERS_LOOKBACK_S * 1000),
        live_from_ms=now_ms,
    )
    newest: dict[str, Any] = {}
    for record in contents.records:
        found = decode_status(record.value, record.timestamp_ms)
        if found is not None:
            known = newest.get(found.service_id)
            if known is None or found.timestamp_ms >= known.timestamp_ms:
                newest[found.service_id] = found
    for view in cluster_views(list(newest.values()), time.time() * 1000):
        if view.group == group:
            return {
                "members": [
                    {"service_id": sid, "member_id": mid, "shards": shards, "streams": n}
                    for sid, mid, shards, n in view.members
                ],
                "stale": view.stale,
                "unowned_shards": view.unowned_shards,
                "unforwarded_streams": view.unforwarded_streams,
                "doubly_owned": view.doubly_owned,
            }
    return None
