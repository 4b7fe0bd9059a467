"""Subprocess: a bare Kafka producer of f144 counters, for the broker latency floor.

    python -m benchmarks._probe_producer BOOTSTRAP TOPIC PVS RATE_HZ SECONDS

Every tick it produces one f144 message per key (`PROBE:{i}`) stamped with the current
time, with librdkafka's default producer settings (a bare producer), so that the consumer
measures what Kafka alone adds.  Prints one JSON line: messages produced and seconds taken.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from confluent_kafka import Producer

from forwarder.core.serialise.f144 import F144Serialiser


def main(argv: list[str]) -> None:
    bootstrap, topic = argv[0], argv[1]
    pvs, rate, seconds = int(argv[2]), float(argv[3]), float(argv[4])
    conf = {"bootstrap.servers": bootstrap, "log_level": 0}
    producer = Producer(conf)
    keys = [f"PROBE:{i}" for i in range(pvs)]
    serialisers = [(k.encode(), F144Serialiser(k)) for k in keys]
    period = 1.0 / rate
    started = due = time.monotonic()
    tick = produced = 0
    while time.monotonic() - started < seconds:
        tick += 1
        value = np.float64(tick)
        now = time.time_ns()
        for key, ser in serialisers:
            payload = ser.serialise(value, now)
            assert payload is not None
            producer.produce(topic, payload, key, timestamp=now // 1_000_000)
        produced += pvs
        producer.poll(0)
        due += period
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -period:
            due = time.monotonic()
    left = producer.flush(10.0)
    print(json.dumps({"produced": produced, "ticks": tick, "unflushed": left,
                      "seconds": time.monotonic() - started}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
