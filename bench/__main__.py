"""Run every benchmark, or the ones named: `python -m bench discovery engine`."""

from __future__ import annotations

import importlib
import sys

ALL = ["discovery", "engine", "backtest", "supervisor"]


def main() -> None:
    for name in sys.argv[1:] or ALL:
        importlib.import_module(f"bench.{name}").main()


main()
