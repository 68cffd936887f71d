"""The `pipeline` command: parse, call one function, render. Only this package prints or exits."""

from __future__ import annotations

from pipeline_v2.cli import commands, ops, tools  # noqa: F401  (they register their commands)
from pipeline_v2.cli.common import app
from pipeline_v2.cli.group import lazy_command


def main() -> None:
    """Console-script entry point: only the command run is built (`--help` builds none)."""
    lazy_command(app).main(prog_name="pipeline")


__all__ = ["app", "main"]
