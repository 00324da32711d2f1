"""A WAL position (PostgreSQL's pg_lsn) as one value type: an int, so positions order and
subtract as bytes (`a - b` is the WAL between them, an int), that prints as PostgreSQL does,
`X/Y` (hex, the high and low 32 bits). Parsed once where text comes in (a query's `::text`,
the record, a cursor); printed where it goes out (SQL, JSON, a message).

0/0 is falsy, as pg_ops has always treated it: "no position known".
"""

from __future__ import annotations

from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema


class Lsn(int):
    __slots__ = ()

    @classmethod
    def parse(cls, text: str | int | None) -> Lsn | None:
        """`X/Y` (or an int: a cursor written as a number) as an Lsn; None for None or "".
        ValueError for anything else."""
        if text is None or text == "":
            return None
        if isinstance(text, int):
            return cls(text)
        hi, sep, lo = text.partition("/")
        if not sep:
            raise ValueError(f"not an LSN: {text!r}")
        return cls((int(hi, 16) << 32) + int(lo, 16))

    def __new__(cls, value: int = 0) -> Lsn:
        if not 0 <= value < 1 << 64:
            raise ValueError(f"an LSN is 64 bits, not {value}")
        return super().__new__(cls, value)

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # Stored as its text ("0/3000060"); read from text or, as older cursors kept it, a number.
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(str, when_used="json"))

    @classmethod
    def _validate(cls, value: Any) -> Lsn | None:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"not an LSN: {value!r}")
        return cls.parse(value)  # "" is None: an optional field that held no position
