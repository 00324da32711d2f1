"""An operation's result as Dagster metadata, and back: the one mapping between the result
dataclasses of operations/ (TopologyChange, RebuildResult, RestartResult, RolloutResult, ...)
and what a run records (output metadata, asset observations), and the one reader `pg-ops` uses
on what a run recorded (pg_ops/runs.py hands it the metadata as plain values).

Each field is one entry named after it: numbers as numbers (Dagster plots them), text as text,
lists and dicts (a result's timed `steps`, its `notes`) as one JSON value each; a field that is
None is left out. Reading back is the same names: a renamed field is renamed on both sides."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import dagster as dg

R = TypeVar("R")


def metadata_value(value: Any) -> dg.MetadataValue:
    """One field's value as a Dagster metadata value."""
    if isinstance(value, bool):  # before int: a bool is an int to Python
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, list | tuple | dict):
        return dg.MetadataValue.json(list(value) if isinstance(value, tuple) else value)
    return dg.MetadataValue.text(str(value))


def metadata_of(result: Any, **extra: Any) -> dict[str, dg.MetadataValue]:
    """A result dataclass as metadata, one entry per field that is not None; `extra`: entries
    the run adds beside the result (the operation's name, the incident it answers), never one
    named like a field."""
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"metadata_of takes a result dataclass, not {type(result).__name__}")
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    if fields.keys() & extra.keys():  # it would be read back as the result's own field
        raise ValueError(f"metadata_of: {', '.join(sorted(fields.keys() & extra.keys()))} is a field of "
                         f"{type(result).__name__}")
    return {name: metadata_value(value) for name, value in {**fields, **extra}.items() if value is not None}


def from_metadata(result_type: type[R], values: Mapping[str, Any]) -> R:
    """The result a run recorded with `metadata_of`, from its metadata as plain values (what
    pg_ops/runs.py reads: `RunOutcome.output_for_node`); entries that are not fields (`extra`)
    are ignored, a field left out (None) takes its default."""
    names = {f.name for f in dataclasses.fields(result_type)}  # type: ignore[arg-type]
    return result_type(**{name: value for name, value in values.items() if name in names})
