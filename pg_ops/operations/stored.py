"""How the dataclasses pg_ops keeps between sensor ticks (SensorCursor, TickMemory and HaMemory:
the health sensor's cursor, a string Dagster stores) become JSON and back: one mechanism for all
of them, pydantic's TypeAdapter over the plain dataclasses.

Why pydantic rather than a hand-written helper: it is pg_ops's schema library already (the
desired-state record, alerts), it reads nested dataclasses, dicts, lists, Optionals and the Lsn
type by their annotations (no type writes its own to/from code, so a field added to a dataclass
is stored without a second edit), and it is lax in the one way an upgrade needs: a cursor an
older pg_ops wrote (a time kept as text, an LSN as a number) still reads. Keys it does not know
are ignored; a value it cannot read gives None, and the caller starts fresh (never a crash)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

T = TypeVar("T")


_ADAPTERS: dict[type, TypeAdapter] = {}  # building one walks the annotations: once per class


def _adapter(cls: type) -> TypeAdapter:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:  # two threads may both build it: the same adapter, harmless
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


def to_json_value(value: object) -> Any:
    """The dataclass as JSON-ready dicts, lists, strings and numbers."""
    return _adapter(type(value)).dump_python(value, mode="json")


def from_json_value(cls: type[T], raw: object) -> T | None:
    """`raw` (JSON-ready values) read as `cls`; None when it cannot be."""
    try:
        return _adapter(cls).validate_python(raw)
    except ValidationError:
        return None
