from __future__ import annotations

import random

import pytest
from streaming_data_types.forwarder_config_update_fc00 import StreamInfo as Fc00Info
from streaming_data_types.forwarder_config_update_fc00 import serialise_fc00
from streaming_data_types.forwarder_config_update_rf5k import StreamInfo as Rf5kInfo
from streaming_data_types.forwarder_config_update_rf5k import serialise_rf5k

from forwarder.core.config_messages import (
    ConfigCommand,
    ConfigMessageError,
    UpdateKind,
    decode_config_message,
    encode_config_message,
)
from forwarder.core.streams import Protocol, StreamFilter, StreamSpec

CA_F144 = StreamSpec("SIM:TEMP", "f144", "motion_data", Protocol.CA, periodic=True)
PVA_TDCT = StreamSpec("SIM:CHOPPER:TDC", "tdct", "chopper.timing", Protocol.PVA, periodic=False)
FAKE_F144 = StreamSpec("fake:ramp", "f144", "fake-data_1", Protocol.FAKE, periodic=True)
SPECS = [CA_F144, PVA_TDCT, FAKE_F144]


# Raw builders so tests can write what encode_config_message refuses to (bad kinds, bad
# fields).  The reference serialisers write their list in reverse, hence reversed(): the
# wire order is then the order written in the test.
def fc00(kind: int, *rows: tuple[str, str, str, int, int]) -> bytes:
    return serialise_fc00(kind, [Fc00Info(*row) for row in reversed(rows)])


def rf5k(kind: int, *rows: tuple[str, str, str, int]) -> bytes:
    return serialise_rf5k(kind, [Rf5kInfo(*row) for row in reversed(rows)])


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [UpdateKind.ADD, UpdateKind.REPLACE])
def test_fc00_round_trip_keeps_streams_and_periodic_flags(kind: UpdateKind) -> None:
    command = decode_config_message(encode_config_message(kind, SPECS, "fc00"), False)
    assert command == ConfigCommand(kind, streams=SPECS, schema_id="fc00")


@pytest.mark.parametrize("periodic", [True, False])
def test_rf5k_round_trip_uses_the_configured_periodic_flag(periodic: bool) -> None:
    buf = encode_config_message(UpdateKind.ADD, SPECS, "rf5k")
    command = decode_config_message(buf, rf5k_periodic=periodic)
    assert command.schema_id == "rf5k"
    assert command.kind is UpdateKind.ADD
    assert [s.key for s in command.streams] == [s.key for s in SPECS]
    assert {s.periodic for s in command.streams} == {periodic}


@pytest.mark.parametrize("schema_id", ["rf5k", "fc00"])
def test_remove_round_trip_gives_filters_without_protocol(schema_id: str) -> None:
    filters = [StreamFilter("SIM:*", "", ""), StreamFilter("", "tdct", "chopper.timing")]
    buf = encode_config_message(UpdateKind.REMOVE, filters, schema_id)
    command = decode_config_message(buf, False)
    assert command.kind is UpdateKind.REMOVE
    assert command.filters == filters
    assert command.streams == [] and command.rejected == []


@pytest.mark.parametrize("schema_id", ["rf5k", "fc00"])
def test_remove_built_from_stream_specs_matches_their_fields(schema_id: str) -> None:
    buf = encode_config_message(UpdateKind.REMOVE, [PVA_TDCT], schema_id)
    command = decode_config_message(buf, False)
    assert command.filters == [StreamFilter(PVA_TDCT.channel, "tdct", PVA_TDCT.topic)]


@pytest.mark.parametrize("schema_id", ["rf5k", "fc00"])
def test_removeall_round_trip_ignores_streams(schema_id: str) -> None:
    for streams in ([], SPECS):
        buf = encode_config_message(UpdateKind.REMOVEALL, streams, schema_id)
        assert decode_config_message(buf, True) == ConfigCommand(
            UpdateKind.REMOVEALL, schema_id=schema_id
        )


def test_fc00_replace_with_no_streams_empties_the_configuration() -> None:
    command = decode_config_message(encode_config_message(UpdateKind.REPLACE, []), False)
    assert command == ConfigCommand(UpdateKind.REPLACE, schema_id="fc00")


def test_encode_rejects_replace_for_rf5k_and_unknown_schema() -> None:
    with pytest.raises(ValueError, match="REPLACE"):
        encode_config_message(UpdateKind.REPLACE, SPECS, "rf5k")
    with pytest.raises(ValueError, match="abcd"):
        encode_config_message(UpdateKind.ADD, SPECS, "abcd")


def test_decodes_messages_written_by_the_reference_serialisers() -> None:
    buf = serialise_fc00(
        0, [Fc00Info("A:B", "f144", "t", 1, 1), Fc00Info("C:D", "tdct", "t2", 0, 0)]
    )
    # serialise_fc00 writes its list in reverse; decoding follows the wire order
    assert decode_config_message(buf, False).streams == [
        StreamSpec("C:D", "tdct", "t2", Protocol.PVA, False),
        StreamSpec("A:B", "f144", "t", Protocol.CA, True),
    ]


# --- validation --------------------------------------------------------------------------


def test_invalid_streams_are_rejected_and_valid_ones_of_the_same_message_kept() -> None:
    buf = fc00(
        0,
        ("GOOD:1", "f144", "topic", 1, 0),
        ("   ", "f144", "topic", 1, 0),
        ("GOOD:2", "xyz1", "topic", 1, 0),
        ("GOOD:3", "f144", "bad topic!", 1, 0),
        ("GOOD:4", "f144", "topic", 9, 0),
        ("", "f144", "topic", 1, 0),
        ("GOOD:5", "tdct", "", 0, 0),
        ("GOOD:6", "f144", "t" * 250, 1, 0),
        ("GOOD:7", "f144", "..", 1, 0),
        ("TAB\tPV", "f144", "topic", 1, 0),
        ("GOOD:8", "tdct", "a.b-c_D9", 2, 1),
    )
    command = decode_config_message(buf, False)
    assert [s.channel for s in command.streams] == ["GOOD:1", "GOOD:8"]
    assert len(command.rejected) == 9
    reasons = dict(
        zip(
            [
                "blank",
                "schema",
                "topic",
                "protocol",
                "empty_channel",
                "empty_topic",
                "long_topic",
                "dotdot",
                "tab",
            ],
            command.rejected,
            strict=True,
        )
    )
    assert "'   '" in reasons["blank"] and "channel is only spaces" in reasons["blank"]
    assert "'xyz1'" in reasons["schema"]
    assert "f144, f142, tdct, nttable_se00, nttable_senv, no_op, al00, ep01" in reasons["schema"]
    assert "'bad topic!'" in reasons["topic"] and "Kafka topic" in reasons["topic"]
    assert "unknown protocol 9" in reasons["protocol"]
    assert "channel is empty" in reasons["empty_channel"]
    assert "topic is empty" in reasons["empty_topic"]
    assert "Kafka topic" in reasons["long_topic"]
    assert "Kafka topic" in reasons["dotdot"]
    assert "control characters" in reasons["tab"]
    for reason in command.rejected:
        assert "channel=" in reason and "schema=" in reason and "topic=" in reason
        assert "\n" not in reason


HOSTILE = "<img src=x onerror=alert(1)>"


def test_channels_with_spaces_are_accepted_as_the_ess_forwarder_does() -> None:
    names = [HOSTILE, "IOC:TEMP SETPOINT", " LEADING", "TRAILING ", "A  B"]
    buf = fc00(0, *[(name, "f144", "topic", 2, 0) for name in names])
    command = decode_config_message(buf, False)
    assert command.rejected == []
    assert [s.channel for s in command.streams] == names
    # And they survive the trip through the encoder (storage topic, forwarder-config).
    specs = command.streams
    again = decode_config_message(encode_config_message(UpdateKind.ADD, specs), False)
    assert again.streams == specs


@pytest.mark.parametrize(
    "channel",
    ["A\tB", "A\nB", "A\rB", "A\x00B", "A\x7fB", "A\u00a0B", "A\u2028B", "A\u200bB"],
)
def test_control_characters_and_other_whitespace_are_still_rejected(channel: str) -> None:
    buf = fc00(0, ("GOOD", "f144", "topic", 1, 0), (channel, "f144", "topic", 1, 0))
    command = decode_config_message(buf, False)
    assert [s.channel for s in command.streams] == ["GOOD"]
    (reason,) = command.rejected
    assert "control characters" in reason and "\n" not in reason


def test_ca_record_name_limit_counts_spaces_too() -> None:
    ok = "A B".ljust(59, "x")
    long = ok + "y"
    buf = fc00(0, (ok, "f144", "t", 1, 0), (long + ".VAL", "f144", "t", 1, 0))
    command = decode_config_message(buf, False)
    assert [s.channel for s in command.streams] == [ok]
    (reason,) = command.rejected
    assert "limited to 59 characters (this one has 60)" in reason


def test_topic_of_exactly_249_chars_is_legal() -> None:
    command = decode_config_message(fc00(0, ("PV", "f144", "t" * 249, 1, 0)), False)
    assert len(command.streams) == 1


def test_a_stream_with_several_problems_lists_them_all_in_one_reason() -> None:
    buf = fc00(0, ("OK", "f144", "t", 1, 0), ("", "nope", "", 7, 0))
    (reason,) = decode_config_message(buf, False).rejected
    for problem in ("channel is empty", "schema must be", "topic is empty", "protocol 7"):
        assert problem in reason


def test_duplicate_streams_are_collapsed_and_last_periodic_flag_wins() -> None:
    buf = fc00(
        0,
        ("A", "f144", "t", 1, 0),
        ("B", "f144", "t", 1, 0),
        ("A", "f144", "t", 1, 0),
        ("A", "f144", "t", 1, 1),
        ("A", "f144", "t", 0, 0),  # another protocol: another stream
    )
    streams = decode_config_message(buf, False).streams
    assert streams == [
        StreamSpec("A", "f144", "t", Protocol.CA, True),
        StreamSpec("B", "f144", "t", Protocol.CA, False),
        StreamSpec("A", "f144", "t", Protocol.PVA, False),
    ]


def test_add_with_no_streams_is_an_error() -> None:
    with pytest.raises(ConfigMessageError, match="ADD with no streams"):
        decode_config_message(fc00(0), False)


def test_add_with_only_invalid_streams_is_an_error_quoting_the_reasons() -> None:
    with pytest.raises(ConfigMessageError, match="ADD with no valid streams.*'BAD:PV'"):
        decode_config_message(rf5k(0, ("BAD:PV", "nope", "t", 1)), False)


def test_error_line_summarises_many_rejections() -> None:
    rows = [(f"BAD:{i}", "f144", "bad topic", 1, 0) for i in range(10)]
    with pytest.raises(ConfigMessageError) as info:
        decode_config_message(fc00(0, *rows), False)
    assert "(+7 more)" in str(info.value) and "BAD:9" not in str(info.value)


def test_replace_with_only_invalid_streams_is_an_error() -> None:
    with pytest.raises(ConfigMessageError, match="REPLACE with no valid streams"):
        decode_config_message(fc00(3, ("PV", "bad", "t", 1, 0)), False)


def test_remove_entry_with_all_fields_empty_is_rejected() -> None:
    buf = fc00(1, ("", "", "", 1, 0), ("PV", "", "", 0, 0))
    command = decode_config_message(buf, False)
    assert command.filters == [StreamFilter("PV", "", "")]
    assert len(command.rejected) == 1 and "REMOVEALL" in command.rejected[0]


@pytest.mark.parametrize(
    "buf",
    [fc00(1), fc00(1, ("", "", "", 1, 0)), rf5k(1, ("", "", "", 0), ("", "", "", 1))],
)
def test_remove_without_usable_filter_is_an_error(buf: bytes) -> None:
    with pytest.raises(ConfigMessageError, match="REMOVE with no"):
        decode_config_message(buf, False)


def test_remove_duplicates_are_collapsed_and_protocol_ignored() -> None:
    buf = fc00(1, ("PV", "f144", "", 1, 0), ("PV", "f144", "", 0, 1))
    assert decode_config_message(buf, False).filters == [StreamFilter("PV", "f144", "")]


# --- whole-message errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (b"", r"message too short \(0 bytes\)"),
        (b"abc", r"message too short \(3 bytes\)"),
        (b"\x00\x00\x00\x00abcd\x00\x00\x00\x00", "unknown schema id 'abcd'"),
        (b"\x00\x00\x00\x00\xff\xfe\x00\x01", r"unknown schema id"),
        (b"\xff\xff\xff\x7frf5k", "corrupt rf5k message"),
        (b"\xff\xff\xff\x7ffc00\x00\x00\x00\x00", "corrupt fc00 message"),
    ],
)
def test_unusable_messages_raise_one_line_errors(buf: bytes, message: str) -> None:
    with pytest.raises(ConfigMessageError, match=message) as info:
        decode_config_message(buf, False)
    assert "\n" not in str(info.value)


def test_unknown_update_type_is_an_error() -> None:
    with pytest.raises(ConfigMessageError, match="unknown update type 7"):
        decode_config_message(fc00(7, ("PV", "f144", "t", 1, 0)), False)


def test_replace_in_rf5k_is_an_error() -> None:
    with pytest.raises(ConfigMessageError, match="REPLACE is not supported by rf5k"):
        decode_config_message(rf5k(3, ("PV", "f144", "t", 1)), False)


def test_invalid_utf8_in_a_field_is_a_corrupt_message() -> None:
    buf = bytearray(fc00(0, ("PV_MARKER", "f144", "t", 1, 0)))
    at = buf.index(b"PV_MARKER")
    buf[at] = 0xFF
    with pytest.raises(ConfigMessageError, match="corrupt fc00 message: UnicodeDecodeError"):
        decode_config_message(bytes(buf), False)


def test_accepts_bytearray_and_memoryview() -> None:
    buf = encode_config_message(UpdateKind.ADD, SPECS)
    for variant in (bytearray(buf), memoryview(buf)):
        assert decode_config_message(variant, False).streams == SPECS  # type: ignore[arg-type]


def test_non_bytes_input_raises_config_message_error() -> None:
    with pytest.raises(ConfigMessageError):
        decode_config_message(None, False)  # type: ignore[arg-type]


# --- fuzzing -----------------------------------------------------------------------------


def _decode_or_error(buf: bytes) -> str:
    try:
        command = decode_config_message(buf, False)
    except ConfigMessageError as error:
        assert str(error) and "\n" not in str(error)
        return "error"
    assert isinstance(command, ConfigCommand)
    assert all(isinstance(s, StreamSpec) for s in command.streams)
    return "ok"


def _valid_messages() -> list[bytes]:
    many = [
        StreamSpec(f"PV:{i}", "f144", f"topic_{i % 3}", Protocol(i % 3), i % 2 == 0)
        for i in range(8)
    ]
    messages = []
    for kind in UpdateKind:
        messages.append(encode_config_message(kind, many, "fc00"))
        if kind is not UpdateKind.REPLACE:
            messages.append(encode_config_message(kind, many[:5], "rf5k"))
    return messages


def test_fuzz_random_bytes_only_decode_or_raise_config_message_error() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        length = rng.randrange(0, 200)
        body = bytes(rng.getrandbits(8) for _ in range(length))
        if length >= 8 and rng.random() < 0.7:  # make most of them reach the flatbuffer parser
            body = body[:4] + rng.choice([b"fc00", b"rf5k"]) + body[8:]
        _decode_or_error(body)


def test_fuzz_truncations_of_valid_messages() -> None:
    for buf in _valid_messages():
        outcomes = {_decode_or_error(buf[:cut]) for cut in range(len(buf))}
        assert "error" in outcomes  # the short prefixes at least must be refused
        assert _decode_or_error(buf) == "ok"


def test_fuzz_bit_flips_and_byte_overwrites_of_valid_messages() -> None:
    rng = random.Random(99)
    messages = _valid_messages()
    outcomes = set()
    for _ in range(4000):
        buf = bytearray(rng.choice(messages))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(buf))
            if rng.random() < 0.5:
                buf[at] ^= 1 << rng.randrange(8)
            else:
                buf[at] = rng.getrandbits(8)
        outcomes.add(_decode_or_error(bytes(buf)))
    assert outcomes == {"ok", "error"}  # the fuzzer exercised both paths


def test_ca_record_name_longer_than_ca_can_search_for_is_rejected() -> None:
    """caproto (and RSRV) refuse record names over 59 characters in a search request."""
    longest, too_long = "R" * 59, "R" * 60
    command = decode_config_message(
        fc00(
            0,
            (longest, "f144", "t", 1, 0),
            (f"{longest}.VAL", "f144", "t", 1, 0),
            (too_long, "f144", "t", 1, 0),
            (f"{too_long}.VAL", "f144", "t", 1, 0),
            (too_long, "f144", "t", 0, 0),  # PVA has no such limit
        ),
        False,
    )
    assert [(s.channel, s.protocol) for s in command.streams] == [
        (longest, Protocol.CA),
        (f"{longest}.VAL", Protocol.CA),
        (too_long, Protocol.PVA),
    ]
    assert len(command.rejected) == 2
    for reason in command.rejected:
        assert "59 characters" in reason and "has 60" in reason and "protocol=ca" in reason


ESS_SCHEMAS = ("f142", "f144", "tdct", "no_op", "al00", "ep01")


@pytest.mark.parametrize("protocol", [Protocol.CA, Protocol.PVA, Protocol.FAKE])
def test_every_schema_the_ess_forwarder_accepts_is_accepted(protocol: Protocol) -> None:
    rows = [(f"PV:{s}", s, "t", int(protocol), 0) for s in ESS_SCHEMAS]
    command = decode_config_message(fc00(0, *rows), False)
    assert [s.schema for s in command.streams] == list(ESS_SCHEMAS)
    assert command.rejected == []


def test_nttable_schemas_are_pva_only() -> None:
    rows = [
        ("T:1", "nttable_se00", "t", int(Protocol.PVA), 0),
        ("T:2", "nttable_senv", "t", int(Protocol.PVA), 0),
        ("T:3", "nttable_se00", "t", int(Protocol.CA), 0),
        ("T:4", "nttable_senv", "t", int(Protocol.FAKE), 0),
    ]
    command = decode_config_message(fc00(0, *rows), False)
    assert [s.channel for s in command.streams] == ["T:1", "T:2"]
    assert len(command.rejected) == 2
    assert "'T:3'" in command.rejected[0] and "needs protocol pva" in command.rejected[0]
    assert "'T:4'" in command.rejected[1] and "needs protocol pva" in command.rejected[1]


@pytest.mark.parametrize("schema", ["F142", "f143", "se00", "senv", "nttable", "x5f2"])
def test_other_schemas_are_rejected_naming_the_accepted_ones(schema: str) -> None:
    with pytest.raises(ConfigMessageError) as info:
        decode_config_message(fc00(0, ("PV", schema, "t", 1, 0)), False)
    assert "schema must be one of f144, f142, tdct, nttable_se00, nttable_senv" in str(info.value)
