"""The Lsn value type (pg_ops/postgres/lsn.py): parsed from and printed as PostgreSQL's `X/Y`,
ordered and subtracted as bytes, stored in the sensor's cursor as its text."""

import json

import pytest
from pydantic import TypeAdapter

from pg_ops.postgres.lsn import Lsn


@pytest.mark.parametrize("text, value", [("0/0", 0), ("0/3000060", 0x3000060),
                                         ("16/B374D848", (0x16 << 32) + 0xB374D848),
                                         ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1)])
def test_parse_and_print_round_trip(text, value):
    lsn = Lsn.parse(text)
    assert lsn == value and isinstance(lsn, Lsn)
    assert str(lsn) == text and f"{lsn}" == text and f"{lsn:>12}" == text.rjust(12)
    assert Lsn.parse(str(lsn)) == lsn and repr(lsn) == f"Lsn('{text}')"


def test_nothing_parses_as_none_and_garbage_raises():
    assert Lsn.parse(None) is None and Lsn.parse("") is None
    assert Lsn.parse(42) == 42  # a number, as older cursors kept departed positions
    for bad in ("3000060", "0/XYZ", "1/"):
        with pytest.raises(ValueError):
            Lsn.parse(bad)
    with pytest.raises(ValueError):
        Lsn(-1)
    with pytest.raises(ValueError):
        Lsn(1 << 64)


def test_order_is_by_position_not_text():
    # As text "0/10000060" < "0/FFFFF38"; as positions it is the other way round.
    assert Lsn.parse("0/10000060") > Lsn.parse("0/FFFFF38")
    assert Lsn.parse("1/0") > Lsn.parse("0/FFFFFFFF")
    assert max(Lsn.parse("0/5000000"), Lsn.parse("0/5000100")) == Lsn.parse("0/5000100")
    assert sorted([Lsn.parse("1/0"), Lsn.parse("0/2")]) == [Lsn.parse("0/2"), Lsn.parse("1/0")]


def test_difference_is_bytes_of_wal():
    diff = Lsn.parse("1/10") - Lsn.parse("0/FFFFFFF0")
    assert diff == 0x20 and type(diff) is int  # a byte count, not a position
    assert Lsn.parse("0/5000000") - Lsn.parse("0/5000100") == -0x100


def test_zero_is_no_position():
    assert not Lsn(0) and Lsn.parse("0/1")


def test_stored_as_text_read_from_text_or_a_number():
    adapter = TypeAdapter(dict[str, Lsn])
    assert json.loads(adapter.dump_json({"a": Lsn.parse("0/5000100")})) == {"a": "0/5000100"}
    assert adapter.validate_python({"a": "0/5000100", "b": 83886336}) == {"a": 0x5000100, "b": 0x5000100}
    assert all(isinstance(v, Lsn) for v in adapter.validate_python({"a": "0/1", "b": 2}).values())
