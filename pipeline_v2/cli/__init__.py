"""The `pipeline` command: parse, call one function, render. Only this package prints or exits."""

from __future__ import annotations

from pipeline_v2.cli import commands, ops, tools  # noqa: F401  (they register their commands)
from pipeline_v2.cli.common import app


def main() -> None:
    """Console-script entry point."""
    app(prog_name="pipeline")


__all__ = ["app", "main"]
