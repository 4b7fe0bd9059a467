"""Factory for value serialisers."""

from __future__ import annotations

import pytest
from streaming_data_types.logdata_f144 import deserialise_f144
from streaming_data_types.timestamps_tdct import deserialise_tdct

from forwarder.core.serialise import (
    F144Serialiser,
    TdctSerialiser,
    ValueSerialiser,
    make_value_serialiser,
)


def test_factory_builds_each_schema() -> None:
    f144: ValueSerialiser = make_value_serialiser("f144", "a")
    tdct: ValueSerialiser = make_value_serialiser("tdct", "b")
    assert isinstance(f144, F144Serialiser) and isinstance(tdct, TdctSerialiser)
    assert deserialise_f144(f144.serialise(2.0, 1) or b"").value == 2.0
    assert deserialise_tdct(tdct.serialise([1], 1) or b"").timestamps.tolist() == [2]


@pytest.mark.parametrize("schema", ["F144", "", "f143", "nttable", "se00"])
def test_factory_rejects_other_schemas(schema: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        make_value_serialiser(schema, "x")
