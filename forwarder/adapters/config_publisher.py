"""Produces config messages to the config topic and waits until the broker has them.

Used by the web page's write endpoints: the page's change goes through the config topic
like one from `forwarder-config`, so storage, status and every forwarder reading that topic
see it; this forwarder applies it when its own consumer reads it back.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from forwarder.adapters.kafka_logging import with_kafka_logger
from forwarder.adapters.web_ui import PublishError

#: Config messages share one key, so on a topic of several partitions they keep their order.
CONFIG_KEY = b"config"


class ConfigPublisher:
    """One producer for the config topic; `publish` blocks until acknowledged or timeout."""

    def __init__(self, config: Mapping[str, Any], topic: str, timeout_s: float = 5.0) -> None:
        conf: dict[str, Any] = {
            "linger.ms": 0,
            "message.timeout.ms": int(timeout_s * 1000),
            "message.max.bytes": 64 * 1024 * 1024,
        }
        conf.update(config)
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer = Producer(with_kafka_logger(conf))
        self._lock = threading.Lock()

    def publish(self, payload: bytes) -> None:
        """Raises PublishError when the broker did not acknowledge within the timeout."""
        result: dict[str, KafkaError | None] = {}

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            result["error"] = err

        with self._lock:
            try:
                self._producer.produce(self.topic, payload, CONFIG_KEY, on_delivery=on_delivery)
            except (BufferError, KafkaException) as err:
                raise PublishError(str(err)) from None
            self._producer.flush(self.timeout_s + 1.0)
        if "error" not in result:
            raise PublishError(f"not acknowledged within {self.timeout_s:g} s")
        failure = result["error"]
        if failure is not None:
            raise PublishError(failure.str())

    def close(self) -> None:
        self._producer.flush(0.5)
