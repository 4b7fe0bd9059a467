"""Builds the operator web page (`forwarder.adapters.web_ui`) from a running service.

Kept apart from `service.py` so the service only needs one call to get its page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from forwarder.adapters.web_ui import PublishError, ServiceInfo, WebUi
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
        info.extras["cluster"] = lambda: cluster.status(
            controller.registry.streams, controller.config_version
        )

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
