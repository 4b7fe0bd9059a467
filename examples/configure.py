"""Tell a running forwarder to forward the example IOC's PVs (or to stop forwarding them).

With the docker-compose.yml of this repository running (Kafka reachable on localhost:9094):

    python examples/configure.py --broker localhost:9094 --topic forwarder_config

sends one fc00 (or, with ``--format rf5k``, rf5k) ADD message to the forwarder's config
topic for every PV of ``example_ioc.py`` (f144, or tdct for the chopper timestamps), all to
``--output-topic``.  ``--remove-all`` sends REMOVEALL instead.  Needs only the
``confluent-kafka`` and ``ess-streaming-data-types`` packages, not the forwarder itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import (
    UpdateType as Fc00UpdateType,
)
from streaming_data_types.fbschemas.forwarder_config_update_rf5k.Protocol import (
    Protocol as Rf5kProtocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_rf5k.UpdateType import (
    UpdateType as Rf5kUpdateType,
)
from streaming_data_types.forwarder_config_update_fc00 import StreamInfo as Fc00Stream
from streaming_data_types.forwarder_config_update_fc00 import serialise_fc00
from streaming_data_types.forwarder_config_update_rf5k import StreamInfo as Rf5kStream
from streaming_data_types.forwarder_config_update_rf5k import serialise_rf5k

sys.path.insert(0, str(Path(__file__).resolve().parent))
from example_ioc import PV_SCHEMAS  # noqa: E402  (sibling script)

PROTOCOLS = ("pva", "ca")
FORMATS = ("fc00", "rf5k")


def streams(prefix: str, output_topic: str) -> list[tuple[str, str, str]]:
    """(channel, schema, topic) for every PV of the example IOC."""
    return [
        (f"{prefix}{suffix}", schema, output_topic) for suffix, (_, schema) in PV_SCHEMAS.items()
    ]


def build_message(
    fmt: str,
    prefix: str,
    protocol: str,
    output_topic: str,
    *,
    periodic: bool = False,
    remove_all: bool = False,
) -> bytes:
    """The serialised config message (ADD of every example PV, or REMOVEALL)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    wanted = [] if remove_all else streams(prefix, output_topic)
    if fmt == "fc00":
        proto = Fc00Protocol.PVA if protocol == "pva" else Fc00Protocol.CA
        kind = Fc00UpdateType.REMOVEALL if remove_all else Fc00UpdateType.ADD
        return serialise_fc00(
            kind, [Fc00Stream(c, s, t, proto, int(periodic)) for c, s, t in wanted]
        )
    if periodic:
        raise ValueError("rf5k has no periodic flag; the forwarder's own setting applies")
    proto = Rf5kProtocol.PVA if protocol == "pva" else Rf5kProtocol.CA
    kind = Rf5kUpdateType.REMOVEALL if remove_all else Rf5kUpdateType.ADD
    return serialise_rf5k(kind, [Rf5kStream(c, s, t, proto) for c, s, t in wanted])


def send(broker: str, topic: str, payload: bytes, timeout: float = 10.0) -> None:
    """Produce `payload` to `topic` and wait until Kafka has it; raise on failure."""
    from confluent_kafka import KafkaException, Producer

    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    # librdkafka's own connection logs are silenced: the outcome is reported as one line.
    settings = {"bootstrap.servers": broker, "message.timeout.ms": int(timeout * 1000)}
    producer = Producer({**settings, "log_level": 0})
    producer.produce(topic, payload, on_delivery=delivered)
    if producer.flush(timeout + 1) > 0:
        raise KafkaException(f"message not delivered to {broker} within {timeout} s")
    if errors:
        raise KafkaException(f"delivery to {topic} failed: {errors[0]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="localhost:9094", help="Kafka bootstrap host:port")
    parser.add_argument("--topic", default="forwarder_config", help="forwarder config topic")
    parser.add_argument("--prefix", default="SIMPLE:", help="the example IOC's PV prefix")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="pva", help="EPICS protocol")
    parser.add_argument("--output-topic", default="example_data", help="where the data goes")
    parser.add_argument("--format", choices=FORMATS, default="fc00", help="message schema")
    parser.add_argument(
        "--periodic", action="store_true", help="fc00 only: re-send values periodically"
    )
    parser.add_argument("--remove-all", action="store_true", help="send REMOVEALL instead")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for Kafka")
    args = parser.parse_args(argv)
    if args.periodic and args.format != "fc00":
        parser.error("--periodic needs --format fc00")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload = build_message(
        args.format,
        args.prefix,
        args.protocol,
        args.output_topic,
        periodic=args.periodic,
        remove_all=args.remove_all,
    )
    try:
        send(args.broker, args.topic, payload, timeout=args.timeout)
    except Exception as exc:  # one clear line, no traceback, for a command-line tool
        print(f"configure.py: {exc}", file=sys.stderr)
        return 1
    kind = "REMOVEALL" if args.remove_all else "ADD"
    print(f"Sent {args.format} {kind} to {args.topic} on {args.broker}")
    if not args.remove_all:
        for channel, schema, topic in streams(args.prefix, args.output_topic):
            print(f"  {args.protocol}://{channel} as {schema} -> {topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
