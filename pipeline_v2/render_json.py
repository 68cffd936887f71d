"""Results as JSON: pretty for one object, streamed for many. No rich: `--json` output and the
HTTP endpoints never pay for the table renderer."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterable
from enum import Enum
from typing import IO, Any

_PLAIN = frozenset({str, int, bool, type(None)})


def jsonable(value: Any) -> Any:
    """Dataclasses, enums and non-finite floats made JSON-safe."""
    kind = type(value)
    if kind in _PLAIN:  # the common case first: `trials --json` walks millions of these
        return value
    if kind is dict:
        return {str(k): jsonable(v) for k, v in value.items()}
    names = _field_names(kind)
    if names is not None:
        return {name: jsonable(getattr(value, name)) for name in names}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


@functools.lru_cache(maxsize=256)
def _field_names(kind: type) -> tuple[str, ...] | None:
    """A dataclass type's field names (looked up once per type), None for other types."""
    if not dataclasses.is_dataclass(kind):
        return None
    return tuple(f.name for f in dataclasses.fields(kind))


def to_json(value: Any) -> str:
    """Pretty JSON of any result."""
    return json.dumps(jsonable(value), indent=2, default=str)


_COMPACT = json.JSONEncoder(separators=(",", ":"), default=str)


def stream_json(items: Iterable[Any], out: IO[str], lines: bool = False) -> None:
    """A JSON array (or JSON lines), one compact element at a time: memory stays constant."""
    if lines:
        for item in items:
            out.write(_COMPACT.encode(jsonable(item)) + "\n")
        return
    out.write("[")
    separator = "\n"
    for item in items:
        out.write(separator + _COMPACT.encode(jsonable(item)))
        separator = ",\n"
    out.write("\n]\n" if separator != "\n" else "]\n")
