"""Results as JSON: pretty for one object, streamed for many. No rich: `--json` output and the
HTTP endpoints never pay for the table renderer."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from enum import Enum
from typing import IO, Any


def jsonable(value: Any) -> Any:
    """Dataclasses, enums and non-finite floats made JSON-safe."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


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
