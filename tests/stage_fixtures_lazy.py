"""Stage callables for tests/test_stage_files.py."""

from __future__ import annotations

from typing import Any


def noop(ctx: Any) -> dict[str, float]:
    """Touch nothing."""
    return {"ok": 1.0}


def writes(ctx: Any) -> dict[str, float]:
    """Write a file into the run folder and a log line."""
    (ctx.run_dir / "out.txt").write_text("x")
    ctx.log.info("wrote")
    return {"ok": 1.0}
