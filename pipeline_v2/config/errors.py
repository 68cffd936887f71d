"""Turn pydantic validation errors into one line a person can act on:
`stages.deploy.max_atempts: unknown key (did you mean max_attempts?)`."""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline_v2.gates import format_number
from pipeline_v2.redact import redact


def quote(value: Any) -> str:
    """A value as it appears in the message: JSON, shortened."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc`."""
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        annotation = field.annotation if field else None
        candidates = [
            a
            for a in getattr(annotation, "__args__", (annotation,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not candidates:
            return None
        model = candidates[0]
    return model


def unknown_key(key: str, model: type[BaseModel] | None) -> str:
    """"unknown key" with a close match suggested, or the known keys listed."""
    known = [k for k in (model.model_fields if model else {}) if k not in ("base_dir", "source")]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"expected one of {', '.join(known)}"
    return f"unknown key ({hint})"


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _show_bound(value: float) -> str:
    return str(value) if isinstance(value, int) else format_number(value)


def _bounds(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """` >= 1` for a field declared with `ge=1`, so a type error also says the range."""
    owner = _model_at(model, loc)
    field = owner.model_fields.get(str(loc[-1])) if owner else None
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [
        f"{words[name]} {_show_bound(getattr(meta, name))}"
        for meta in (field.metadata if field else [])
        for name in words
        if getattr(meta, name, None) is not None
    ]
    return " " + " and ".join(parts) if parts else ""


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first error: `key.path: what was expected, got <value>`."""
    error = exc.errors()[0]
    loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    # a secret (daemon.http_token, a webhook's token) is never quoted back
    got = quote(redact(error.get("input"), str(loc[-1]) if loc else ""))
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        return f"{path}: {unknown_key(str(loc[-1]), _model_at(model, loc))}"
    if kind == "missing":
        return f"{path}: required key missing"
    if kind == "value_error":
        return f"{path}: {ctx.get('error', error['msg'])}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        bound = _show_bound(next(iter(ctx.values())))
        noun = "an integer" if isinstance(error["input"], int) and "." not in bound else "a number"
        return f"{path}: expected {noun} {op} {bound}, got {got}"
    if kind == "literal_error":
        return f"{path}: expected one of {ctx.get('expected')}, got {got}"
    if kind in ("too_short", "too_long"):
        size = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        which = "at least" if kind == "too_short" else "at most"
        return f"{path}: expected {which} {size} item(s), got {got}"
    if kind in ("string_too_short", "string_too_long"):
        size = ctx.get("min_length") if kind == "string_too_short" else ctx.get("max_length")
        which = "at least" if kind == "string_too_short" else "at most"
        return f"{path}: expected {which} {size} character(s), got {got}"
    if kind in _EXPECTED:
        return f"{path}: expected {_EXPECTED[kind]}{_bounds(model, loc)}, got {got}"
    return f"{path}: {error['msg']}, got {got}"
