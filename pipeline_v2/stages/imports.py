"""Resolve "module:function" stage targets."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def import_callable(target: str) -> Callable[..., Any]:
    """Import "module:function"; ImportError says which part is wrong."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f'cannot import module "{module_name}" ({exc})') from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ImportError(f'module "{module_name}" has no attribute "{attr}"')
    if not callable(obj):
        raise ImportError(f'"{target}" is not callable')
    return obj
