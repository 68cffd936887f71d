"""A no-op stage for benchmarks."""

from __future__ import annotations

from typing import Any


def run(ctx: Any) -> dict[str, float]:
    """Return a constant metric at once."""
    return {"ok": 1.0}


def spin(ctx: Any) -> dict[str, Any]:
    """A CPU-bound stage: pure-Python arithmetic for `seconds` of CPU time."""
    import time

    end = time.process_time() + float(ctx.stage_params.get("seconds", 0.5))
    n = 0
    while time.process_time() < end:
        n += sum(i * i for i in range(1000)) % 7
    return {"n": n}
