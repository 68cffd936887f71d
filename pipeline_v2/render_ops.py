"""Rich views for the operator commands. Builds; never prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pipeline_v2.render import styled


def health_view(report: dict[str, Any]) -> Group:
    """`pipeline health`: the overall state, then one row per component."""
    head = Text.assemble("pipeline ", styled(report["status"]), f" ({report['detail']})")
    table = Table(box=None, pad_edge=False)
    for column in ("component", "status", "checked", "message"):
        table.add_column(column)
    for name, comp in report["components"].items():
        table.add_row(name, styled(comp["status"]), comp["checked_at"] or "-",
                      comp["message"] or "")
    return Group(head, table)
