from __future__ import annotations

import logging

from forwarder.adapters.kafka_logging import RepeatFilter, with_kafka_logger


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("forwarder.librdkafka", logging.WARNING, __file__, 1, msg, args, None)


def test_lines_equal_up_to_numbers_pass_once_per_interval() -> None:
    repeat = RepeatFilter(interval_s=0.0)
    held = RepeatFilter(interval_s=3600.0)
    first = record("Connect to ipv4#127.0.0.1:%d failed", 9092)
    assert held.filter(first) is True
    assert held.filter(record("Connect to ipv4#127.0.0.1:%d failed", 9093)) is False
    assert held.filter(record("another problem")) is True
    # With no interval every line passes, and says how many were held back before it.
    assert repeat.filter(record("broker down")) is True
    again = record("broker down")
    assert repeat.filter(again) is True and again.getMessage() == "broker down"


def test_held_back_count_is_reported_on_the_next_line() -> None:
    clock = [0.0]
    repeat = RepeatFilter(interval_s=10.0, clock=lambda: clock[0])
    assert repeat.filter(record("broker down")) is True
    for _ in range(3):
        assert repeat.filter(record("broker down")) is False
    clock[0] = 10.0
    line = record("broker down")
    assert repeat.filter(line) is True
    assert line.getMessage() == "broker down (3 similar messages suppressed)"


def test_kafka_clients_get_the_filtered_logger_unless_given_one() -> None:
    conf = with_kafka_logger({"bootstrap.servers": "x:1"})
    assert isinstance(conf["logger"], logging.Logger)
    assert any(isinstance(f, RepeatFilter) for f in conf["logger"].filters)
    own = logging.getLogger("mine")
    assert with_kafka_logger({"logger": own})["logger"] is own
