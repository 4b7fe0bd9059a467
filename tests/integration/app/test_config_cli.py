"""`forwarder-config` against a real broker: what it sends is read back and decoded with
streaming_data_types (not with our own codec), and status is read from real x5f2 messages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from streaming_data_types.status_x5f2 import serialise_x5f2

from forwarder.app.config_cli import main
from tests.support.epics_servers import REPO_ROOT
from tests.support.kafka import (
    TopicReader,
    decode,
    free_port,
    produce,
    unique_topic,
    wait_for_broker,
)

Reader = Callable[[str, str], TopicReader]
CA, PVA, FAKE = 1, 0, 2  # wire values
CLOSED = f"127.0.0.1:{free_port()}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sent(make_reader: Reader, bootstrap: str, topic: str) -> tuple[str, Any]:
    """The single config message on `topic`, decoded by streaming_data_types."""
    reader = make_reader(bootstrap, topic)
    msgs = reader.wait_for(lambda ms: len(ms) >= 1, timeout=10)
    reader.poll_messages(0.3)  # a second message would be a bug: make it visible
    assert len(reader.messages) == 1, reader.summary()
    return decode(msgs[0])


def rows(update: Any) -> list[tuple[Any, ...]]:
    return [
        (s.channel, s.schema, s.topic, s.protocol, getattr(s, "periodic", None))
        for s in update.streams
    ]


# -- add / remove / remove-all / replace -------------------------------------------------------


@pytest.mark.parametrize("fmt", ["fc00", "rf5k"])
def test_add_from_arguments(
    kafka_bootstrap: str, make_reader: Reader, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    topic = unique_topic("cfg")
    code, out, err = run(
        capsys, "add", "SIM:A", "SIM:B", "--protocol", "ca", "--schema", "tdct",
        "--topic", "det_data", "--format", fmt, "--config-topic", f"{kafka_bootstrap}/{topic}",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert f"sent ADD ({fmt}) with 2 streams to {kafka_bootstrap}/{topic}" in out
    assert "ca://SIM:B -> det_data [tdct]" in out
    schema, update = sent(make_reader, kafka_bootstrap, topic)
    assert schema == fmt
    assert update.config_change == 0
    periodic = 0 if fmt == "fc00" else None
    assert rows(update) == [
        ("SIM:A", "tdct", "det_data", CA, periodic),
        ("SIM:B", "tdct", "det_data", CA, periodic),
    ]


def test_add_periodic_defaults_to_f144(
    kafka_bootstrap: str, make_reader: Reader, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique_topic("cfg")
    code, out, _ = run(
        capsys, "--config-topic", f"{kafka_bootstrap}/{topic}",  # before the subcommand
        "add", "P:1", "--protocol", "PVA", "--topic", "t1", "--periodic",
    )  # fmt: skip
    assert code == 0
    assert "pva://P:1 -> t1 [f144] periodic" in out
    _, update = sent(make_reader, kafka_bootstrap, topic)
    assert rows(update) == [("P:1", "f144", "t1", PVA, 1)]


@pytest.mark.parametrize("fmt", ["fc00", "rf5k"])
def test_remove_with_wildcards(
    kafka_bootstrap: str, make_reader: Reader, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    topic = unique_topic("cfg")
    code, out, _ = run(
        capsys, "remove", "SIMPLE:*", "OTHER:?", "--topic", "det_*", "--format", fmt,
        "--config-topic", f"{kafka_bootstrap}/{topic}",
    )  # fmt: skip
    assert code == 0
    assert "channel=SIMPLE:* schema=(any) topic=det_*" in out
    _, update = sent(make_reader, kafka_bootstrap, topic)
    assert update.config_change == 1
    assert [(s.channel, s.schema, s.topic) for s in update.streams] == [
        ("SIMPLE:*", "", "det_*"),
        ("OTHER:?", "", "det_*"),
    ]


def test_remove_by_topic_alone(
    kafka_bootstrap: str, make_reader: Reader, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique_topic("cfg")
    code, _, _ = run(
        capsys, "remove", "--topic", "old_topic", "--config-topic", f"{kafka_bootstrap}/{topic}"
    )
    assert code == 0
    _, update = sent(make_reader, kafka_bootstrap, topic)
    assert [(s.channel, s.schema, s.topic) for s in update.streams] == [("", "", "old_topic")]


@pytest.mark.parametrize("fmt", ["fc00", "rf5k"])
def test_remove_all(
    kafka_bootstrap: str, make_reader: Reader, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    topic = unique_topic("cfg")
    code, out, _ = run(
        capsys, "remove-all", "--format", fmt, "--config-topic", f"{kafka_bootstrap}/{topic}"
    )
    assert code == 0
    assert out.startswith(f"sent REMOVEALL ({fmt})")
    schema, update = sent(make_reader, kafka_bootstrap, topic)
    assert (schema, update.config_change, update.streams) == (fmt, 2, [])


def test_replace_fc00(
    kafka_bootstrap: str, make_reader: Reader, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique_topic("cfg")
    code, _, _ = run(
        capsys, "replace", "X:1", "--protocol", "fake", "--topic", "t",
        "--config-topic", f"{kafka_bootstrap}/{topic}",
    )  # fmt: skip
    assert code == 0
    _, update = sent(make_reader, kafka_bootstrap, topic)
    assert update.config_change == 3
    assert rows(update) == [("X:1", "f144", "t", FAKE, 0)]


def test_replace_rf5k_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "replace", "X:1", "--protocol", "ca", "--topic", "t", "--format", "rf5k",
        "--config-topic", f"{CLOSED}/cfg", "--timeout", "1",
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert err.strip() == "forwarder-config replace: error: rf5k cannot express replace;" \
        " use --format fc00"  # fmt: skip


def test_config_topic_from_environment(
    kafka_bootstrap: str,
    make_reader: Reader,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = unique_topic("cfg")
    monkeypatch.setenv("FORWARDER_CONFIG_TOPIC", f"{kafka_bootstrap}/{topic}")
    code, _, _ = run(capsys, "remove", "A:B")
    assert code == 0
    _, update = sent(make_reader, kafka_bootstrap, topic)
    assert [s.channel for s in update.streams] == ["A:B"]


def test_ess_environment_names_and_precedence(
    kafka_bootstrap: str,
    make_reader: Reader,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ESS forwarder's CONFIG_TOPIC works as in forwarder-launch; FORWARDER_* wins."""
    topic, other = unique_topic("cfg_ess"), unique_topic("cfg_ours")
    monkeypatch.delenv("FORWARDER_CONFIG_TOPIC", raising=False)
    monkeypatch.setenv("CONFIG_TOPIC", f"{kafka_bootstrap}/{topic}")
    code, _, err = run(capsys, "remove", "A:B")
    assert code == 0, err
    _, update = sent(make_reader, kafka_bootstrap, topic)
    assert [s.channel for s in update.streams] == ["A:B"]
    monkeypatch.setenv("FORWARDER_CONFIG_TOPIC", f"{kafka_bootstrap}/{other}")
    code, out, err = run(capsys, "remove", "C:D")
    assert code == 0, err
    assert f"to {kafka_bootstrap}/{other} " in out
    _, update = sent(make_reader, kafka_bootstrap, other)
    assert [s.channel for s in update.streams] == ["C:D"]


# -- stream files ------------------------------------------------------------------------------

EXPECTED_FILE_ROWS = [
    ("SIM:TEMP", "f144", "motion", CA, 1),
    ("SIM:TDC", "tdct", "chopper.timing", PVA, 0),
    ("fake:ramp", "f144", "fake-data", FAKE, 0),
]
TEXT = """\
# channel schema topic protocol [periodic]
SIM:TEMP  f144 motion         ca   periodic   # comment after a stream

SIM:TDC   tdct chopper.timing pva  false
fake:ramp f144 fake-data      fake
"""
JSON_TEXT = json.dumps(
    [
        {"channel": "SIM:TEMP", "schema": "f144", "topic": "motion", "protocol": "ca",
         "periodic": True},
        {"channel": "SIM:TDC", "schema": "tdct", "topic": "chopper.timing", "protocol": "pva"},
        {"channel": "fake:ramp", "schema": "f144", "topic": "fake-data", "protocol": "FAKE",
         "periodic": False},
    ]
)  # fmt: skip
YAML_TEXT = """\
# streams for the test
- {channel: "SIM:TEMP", schema: f144, topic: motion, protocol: ca, periodic: true}
- channel: "SIM:TDC"
  schema: tdct
  topic: chopper.timing
  protocol: pva
- {channel: "fake:ramp", schema: f144, topic: fake-data, protocol: fake}
"""


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("streams.txt", TEXT),
        ("streams.json", JSON_TEXT),
        ("streams.yaml", YAML_TEXT),
        ("streams.yml", YAML_TEXT),
        ("json-without-extension", JSON_TEXT),
        ("yaml-without-extension", YAML_TEXT),
        ("text-without-extension", TEXT),
    ],
)
def test_streams_from_file(
    kafka_bootstrap: str,
    make_reader: Reader,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    name: str,
    content: str,
) -> None:
    path = tmp_path / name
    path.write_text(content)
    topic = unique_topic("cfg")
    code, out, err = run(
        capsys, "add", "--file", str(path), "--config-topic", f"{kafka_bootstrap}/{topic}"
    )
    assert (code, err) == (0, ""), err
    assert "with 3 streams" in out
    _, update = sent(make_reader, kafka_bootstrap, topic)
    assert rows(update) == EXPECTED_FILE_ROWS


def test_file_and_arguments_combine_and_remove_takes_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "s.txt"
    path.write_text(TEXT)
    code, out, _ = run(
        capsys, "add", "EXTRA:PV", "--protocol", "ca", "--topic", "x", "--file", str(path),
        "--dry-run",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines()[0] == "would send ADD (fc00) with 4 streams"
    code, out, _ = run(capsys, "remove", "--file", str(path), "--dry-run")
    assert code == 0
    assert "channel=SIM:TDC schema=tdct topic=chopper.timing" in out


# -- bad input ---------------------------------------------------------------------------------


def write(tmp: Path, name: str, content: str) -> str:
    path = tmp / name
    path.write_text(content)
    return str(path)


BAD_INPUTS: list[tuple[Sequence[str], str]] = [
    (["add", "A:B", "--topic", "t"], "CHANNEL arguments need --protocol"),
    (["add", "A:B", "--protocol", "ca"], "CHANNEL arguments need --topic"),
    (["add", "A:B", "--protocol", "tcp", "--topic", "t"], "unknown protocol 'tcp'"),
    (["add", "A:B", "--protocol", "ca", "--topic", "t", "--schema", "x5f2"],
     "schema must be one of f144, f142"),
    (["add", "A:B", "--protocol", "ca", "--topic", "no spaces"],
     "topic is not a legal Kafka topic name"),
    (["add"], "no streams given"),
    (["add", "--topic", "t"], "--topic applies to CHANNEL arguments"),
    (["add", "A:B", "--protocol", "ca", "--topic", "t", "--periodic", "--format", "rf5k"],
     "rf5k has no periodic flag"),
    (["remove"], "remove needs a CHANNEL, --schema, --topic or --file"),
    (["replace"], "use remove-all to remove everything"),
    (["remove-all", "--format", "xyz"], "invalid choice: 'xyz'"),
    (["add", "--file", "{tmp}/missing.txt"], "No such file or directory"),
    (["add", "--file", "{tmp}/short.txt"], "short.txt:2: expected `channel schema topic"),
    (["add", "--file", "{tmp}/typo.json"], "typo.json: stream 1: unknown field(s) chanel"),
    (["add", "--file", "{tmp}/broken.json"], "broken.json: invalid JSON"),
    (["add", "--file", "{tmp}/broken.yaml"], "broken.yaml: invalid YAML"),
    (["add", "--file", "{tmp}/missing-topic.yaml"], "stream 1: missing topic"),
    (["add", "--file", "{tmp}/bad-periodic.txt"], "periodic must be true or false"),
    (["add", "--file", "{tmp}/scalar.json"], "expected a list of streams"),
    (["add", "--file", "{tmp}/one-bad.txt"], "invalid stream (channel='B:2', schema='f145'"),
    (["add", "A:B", "--protocol", "ca", "--topic", "t", "--config-topic", "localhost:9092"],
     "--config-topic: missing topic"),
    (["add", "A:B", "--protocol", "ca", "--topic", "t", "--config-topic",
      "SCRAM-SHA-256\\user@localhost:9092/cfg"], "--config-topic-sasl-password is required"),
    (["add", "A:B", "--protocol", "ca", "--topic", "t", "-X", "nonsense"], "expected KEY=VALUE"),
    (["add", "A:B", "--protocol", "ca", "--topic", "t", "--config-topic",
      "SASL_SSL+localhost:9092/cfg"], "--config-topic: security protocol SASL_SSL needs"),
    (["add", "A:B", "--protocol", "ca", "--topic", "t", "--config-topic",
      "SASL_SSL+PLAIN\\u@localhost/cfg", "--config-topic-sasl-password", "pw",
      "--security-protocol", "sasl_plaintext"], "the address says SASL_SSL but"),
    (["status", "--status-topic", f"{CLOSED}/st", "--max-age", "-1"], "must be more than 0"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_clear_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: Sequence[str],
    message: str,
) -> None:
    write(tmp_path, "short.txt", "A:1 f144 t ca\nA:2 f144 t\n")
    write(tmp_path, "typo.json", '[{"chanel": "A", "schema": "f144", "topic": "t"}]')
    write(tmp_path, "broken.json", '[{"channel": ')
    write(tmp_path, "broken.yaml", "- {channel: [unclosed\n")
    write(tmp_path, "missing-topic.yaml", "- {channel: A, schema: f144, protocol: ca}\n")
    write(tmp_path, "bad-periodic.txt", "A f144 t ca maybe\n")
    write(tmp_path, "scalar.json", "42")
    write(tmp_path, "one-bad.txt", "A:1 f144 t ca\nB:2 f145 t ca\n")
    # A reachable-looking but closed broker: if validation let anything through, the test
    # would see exit code 1 instead of 2.
    monkeypatch.setenv("FORWARDER_CONFIG_TOPIC", f"{CLOSED}/cfg")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run(capsys, *argv, *(["--timeout", "1"] if argv[0] != "frobnicate" else []))
    assert code == 2, err
    assert out == ""
    assert message in err
    assert "Traceback" not in err
    assert all(line.startswith("forwarder-config") for line in err.splitlines()), err


HOSTILE = "<img src=x onerror=alert(1)>"


def test_channel_names_with_spaces_from_arguments_and_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the forwarder accepts (spaces included), the tool accepts; a text file cannot
    hold such a name, and says where it goes instead."""
    monkeypatch.setenv("FORWARDER_CONFIG_TOPIC", f"{CLOSED}/cfg")  # --dry-run: never used
    code, out, err = run(capsys, "add", HOSTILE, "--protocol", "fake", "--topic", "t", "--dry-run")
    assert (code, err) == (0, ""), err
    assert f"fake://{HOSTILE} -> t [f144]" in out
    entry = {"channel": HOSTILE, "schema": "f144", "topic": "t", "protocol": "ca"}
    for name, content in (
        ("streams.json", json.dumps([entry])),
        ("streams.yaml", f"- channel: '{HOSTILE}'\n  schema: f144\n  topic: t\n  protocol: ca\n"),
    ):
        code, out, err = run(capsys, "add", "--file", write(tmp_path, name, content), "--dry-run")
        assert (code, err) == (0, ""), err
        assert f"ca://{HOSTILE} -> t [f144]" in out
    code, out, err = run(capsys, "remove", "<img src=x *", "--dry-run")
    assert (code, err) == (0, ""), err
    assert "channel=<img src=x * schema=(any)" in out
    text = write(tmp_path, "spaces.txt", f"{HOSTILE} f144 t ca\n")
    code, out, err = run(capsys, "add", "--file", text, "--dry-run")
    assert code == 2
    assert "got 6 field(s) (a channel with spaces goes in a JSON or YAML file)" in err


def test_module_entry_point_has_no_traceback() -> None:
    base = [sys.executable, "-m", "forwarder.app.config_cli"]
    ok = subprocess.run(
        [*base, "add", "A:B", "--protocol", "ca", "--topic", "t", "--dry-run"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30,
    )  # fmt: skip
    assert (ok.returncode, ok.stdout.splitlines()[0]) == (0, "would send ADD (fc00) with 1 stream")
    bad = subprocess.run(
        [*base, "add", "A:B", "--protocol", "ca"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr == "forwarder-config add: error: CHANNEL arguments need --topic\n"


# -- unreachable broker ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["add", "A:B", "--protocol", "ca", "--topic", "t", "--config-topic", f"{CLOSED}/cfg"],
        ["remove-all", "--config-topic", f"{CLOSED}/cfg"],
        ["status", "--status-topic", f"{CLOSED}/status"],
    ],
    ids=["add", "remove-all", "status"],
)
def test_unreachable_broker(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    start = time.monotonic()
    code, out, err = run(capsys, *argv, "--timeout", "2")
    assert time.monotonic() - start < 6
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert f"cannot reach Kafka at {CLOSED} within 2 s" in err
    assert "Connection refused" in err


# -- status ------------------------------------------------------------------------------------


def x5f2(service: str, host: str, streams: list[dict[str, Any]], pid: int = 42) -> bytes:
    doc = {
        "streams": streams,
        "summary": {"streams": len(streams), "connected": 0},
        "counters": {},
        "producer_queue_length": 0,
    }
    return serialise_x5f2("forwarder", "1.2.3", service, host, pid, 500, json.dumps(doc))


def stream(channel: str, last_update_ms: int | None, forwarded: int = 7) -> dict[str, Any]:
    return {
        "channel_name": channel,
        "protocol": "CA",
        "output_topic": "det_data",
        "schema": "f144",
        "periodic": False,
        "connection": "CONNECTED",
        "last_update_ms": last_update_ms,
        "updates_forwarded": forwarded,
        "updates_dropped": 3,
    }


def produce_at(bootstrap: str, topic: str, payload: bytes, timestamp_ms: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 0})
    producer.produce(topic, value=payload, timestamp=timestamp_ms)
    assert producer.flush(10) == 0


@pytest.fixture
def status_topic(kafka_bootstrap: str) -> str:
    """Two services; svc-a reported twice (the newer report must win), plus noise."""
    topic = unique_topic("status")
    now = int(time.time() * 1000)
    produce(kafka_bootstrap, topic, [x5f2("svc-a", "host-a", [stream("OLD:PV", now)], pid=1)])
    produce(kafka_bootstrap, topic, [b"not a flatbuffer at all"])
    time.sleep(0.01)  # distinct timestamps: "newest" must not depend on partition order
    produce(
        kafka_bootstrap,
        topic,
        [
            x5f2("svc-b", "host-b", []),
            x5f2(
                "svc-a", "host-a", [stream("NEW:PV1", now - 5000, 12345), stream("NEW:PV2", None)]
            ),
        ],
    )
    return topic


def test_status_table(
    kafka_bootstrap: str, status_topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "status", "--status-topic", f"{kafka_bootstrap}/{status_topic}")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("SERVICE svc-a  HOST host-a  PID 42  forwarder 1.2.3  reported")
    header = lines[1].split()
    assert header == ["CHANNEL", "PROTOCOL", "TOPIC", "SCHEMA", "CONNECTION", "LAST", "UPDATE",
                      "FORWARDED", "DROPPED"]  # fmt: skip
    pv1 = lines[2].split()
    assert pv1[:5] == ["NEW:PV1", "CA", "det_data", "f144", "CONNECTED"]
    assert pv1[6:] == ["s", "ago", "12345", "3"]
    assert 4.0 <= float(pv1[5]) < 15.0
    assert lines[3].split()[:1] == ["NEW:PV2"] and "never" in lines[3]
    assert "OLD:PV" not in out
    assert lines[5].startswith("SERVICE svc-b  HOST host-b")
    assert lines[6].strip() == "(no streams)"


def test_status_json_and_service_filter(
    kafka_bootstrap: str, status_topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"{kafka_bootstrap}/{status_topic}"
    code, out, _ = run(capsys, "status", "--status-topic", uri, "--json")
    assert code == 0
    services = json.loads(out)
    assert [s["service_id"] for s in services] == ["svc-a", "svc-b"]
    a = services[0]
    assert (a["host_name"], a["process_id"], a["software_version"]) == ("host-a", 42, "1.2.3")
    assert [s["channel_name"] for s in a["status"]["streams"]] == ["NEW:PV1", "NEW:PV2"]
    code, out, _ = run(capsys, "status", "--status-topic", uri, "--json", "--service-id", "*-b")
    assert [s["service_id"] for s in json.loads(out)] == ["svc-b"]
    code, out, err = run(capsys, "status", "--status-topic", uri, "--service-id", "svc-zzz")
    assert code == 1
    assert err.strip() == (
        f"forwarder-config status: error: no status messages for service id 'svc-zzz'"
        f" found on {uri}"
    )


def test_status_max_age_skips_old_reports(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique_topic("status")
    uri = f"{kafka_bootstrap}/{topic}"
    hour_ago = int(time.time() * 1000) - 3_600_000
    produce_at(kafka_bootstrap, topic, x5f2("gone", "h", []), hour_ago)
    produce_at(kafka_bootstrap, topic, x5f2("alive", "h", []), int(time.time() * 1000))
    code, out, _ = run(capsys, "status", "--status-topic", uri, "--json", "--max-age", "60")
    assert code == 0
    assert [s["service_id"] for s in json.loads(out)] == ["alive"]
    code, out, _ = run(capsys, "status", "--status-topic", uri, "--json")
    assert [s["service_id"] for s in json.loads(out)] == ["alive", "gone"]


def test_status_without_messages(kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    topic = unique_topic("status")
    produce(kafka_bootstrap, topic, [b"noise only"])
    code, out, err = run(capsys, "status", "--status-topic", f"{kafka_bootstrap}/{topic}")
    assert (code, out) == (1, "")
    assert "no status messages found on" in err
    missing = unique_topic("nothing")
    code, out, err = run(capsys, "status", "--status-topic", f"{kafka_bootstrap}/{missing}")
    assert code == 1
    assert f"topic '{missing}' does not exist" in err


# -- through a running forwarder ---------------------------------------------------------------


def _status_streams(capsys: pytest.CaptureFixture[str], uri: str) -> list[dict[str, Any]]:
    code, out, err = run(capsys, "status", "--status-topic", uri, "--json", "--max-age", "2")
    assert code == 0, err
    services = json.loads(out)
    assert len(services) == 1, services
    streams: list[dict[str, Any]] = services[0]["status"]["streams"]
    return streams


def _wait_status(
    capsys: pytest.CaptureFixture[str],
    uri: str,
    predicate: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        streams = _status_streams(capsys, uri)
        if predicate(streams) or time.monotonic() > deadline:
            return streams
        time.sleep(0.3)


def test_round_trip_through_a_running_forwarder(
    kafka_bootstrap: str, make_reader: Reader, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.forwarder_process import ForwarderProcess

    wait_for_broker(kafka_bootstrap)
    data_topic = unique_topic("data")
    with ForwarderProcess(kafka_bootstrap, args=["--fake-pv-period", "100"]) as fwd:
        config_uri = f"{kafka_bootstrap}/{fwd.config_topic}"
        status_uri = f"{kafka_bootstrap}/{fwd.status_topic}"
        code, _, err = run(
            capsys, "add", "FAKE:PV1", "--protocol", "fake", "--schema", "f144",
            "--topic", data_topic, "--config-topic", config_uri,
        )  # fmt: skip
        assert code == 0, err
        reader = make_reader(kafka_bootstrap, data_topic)
        reader.wait_for(lambda ms: sum(m.schema_id == "f144" for m in ms) >= 3, timeout=15)

        streams = _wait_status(capsys, status_uri, lambda s: bool(s) and s[0]["updates_forwarded"])
        assert [(s["channel_name"], s["protocol"], s["output_topic"]) for s in streams] == [
            ("FAKE:PV1", "FAKE", data_topic)
        ], fwd.log()
        code, out, _ = run(capsys, "status", "--status-topic", status_uri, "--max-age", "2")
        assert code == 0
        assert "FAKE:PV1" in out and data_topic in out

        code, _, err = run(capsys, "remove", "FAKE:*", "--config-topic", config_uri)
        assert code == 0, err
        assert _wait_status(capsys, status_uri, lambda s: not s) == [], fwd.log()
        code, out, _ = run(capsys, "status", "--status-topic", status_uri, "--max-age", "2")
        assert "(no streams)" in out

        # replace (fc00) and remove-all (rf5k), also through the running forwarder
        code, _, err = run(
            capsys, "add", "FAKE:A", "FAKE:B", "--protocol", "fake", "--topic", data_topic,
            "--config-topic", config_uri,
        )  # fmt: skip
        assert code == 0, err
        names = lambda s: sorted(x["channel_name"] for x in s)  # noqa: E731
        assert names(_wait_status(capsys, status_uri, lambda s: len(s) == 2)) == [
            "FAKE:A", "FAKE:B"
        ]  # fmt: skip
        code, _, err = run(
            capsys, "replace", "FAKE:B", "FAKE:C", "--protocol", "fake", "--topic", data_topic,
            "--config-topic", config_uri,
        )  # fmt: skip
        assert code == 0, err
        after = _wait_status(capsys, status_uri, lambda s: names(s) == ["FAKE:B", "FAKE:C"])
        assert names(after) == ["FAKE:B", "FAKE:C"], fwd.log()
        code, _, err = run(capsys, "remove-all", "--format", "rf5k", "--config-topic", config_uri)
        assert code == 0, err
        assert _wait_status(capsys, status_uri, lambda s: not s) == [], fwd.log()
