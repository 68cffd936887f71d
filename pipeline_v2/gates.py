"""Gates: thresholds on stage metrics. Parsing and evaluation, both pure."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
# `study.METRIC` gates read the whole search's numbers (reports/study.py computes them).
STUDY = "study"
STUDY_METRICS = ("pbo", "trials", "observations", "slope", "intercept", "prob_oos_loss",
                 "n_combinations")
# The negation shown in a reason: "sharpe 0.82 < 1.0" explains a failed ">= 1.0".
_NEGATED = {">=": "<", "<=": ">", ">": "<=", "<": ">=", "==": "!=", "!=": "=="}
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_GATE = re.compile(r"^\s*(?P<op>[<>=!]=?|=>|=<)\s*(?P<number>\S+)\s*$")


@dataclass(frozen=True)
class Gate:
    """`metric OP threshold`; `metric` may be `stage.metric` to read an earlier stage."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {format_number(self.threshold)}"


def format_number(x: float) -> str:
    """Show 1.0 as "1.0" and 0.8234 as "0.8234": short, but never hiding a decimal point."""
    text = f"{x:.4g}"
    return text if any(c in text for c in ".en") else f"{text}.0"


def parse_gate(metric: str, expression: str) -> list[Gate]:
    """Parse `">= 1.0"`, or bounds joined by "and" (`">= 1.0 and < 3"`); raise ValueError
    with a message that quotes the expression and shows the accepted form."""
    if not isinstance(expression, str):
        raise ValueError(f'expected a string like ">= 1.0", got {expression!r}')
    return [_parse_bound(metric, part, expression) for part in _AND.split(expression)]


def _parse_bound(metric: str, part: str, expression: str) -> Gate:
    match = _GATE.match(part)
    if not match or match["op"] not in OPERATORS:
        what = f'unknown operator "{match["op"]}" in' if match else "cannot read"
        raise ValueError(
            f'{what} "{expression}" (expected one of {" ".join(OPERATORS)} followed by a '
            'number, or bounds joined by "and", e.g. ">= 1.0 and < 3")'
        )
    try:
        threshold = float(match["number"])
    except ValueError:
        raise ValueError(
            f'expected a number after "{match["op"]}", got "{match["number"]}"'
        ) from None
    return Gate(metric, match["op"], threshold)


def parse_gates(gates: Mapping[str, str]) -> list[Gate]:
    """Parse a stage's `gates` mapping."""
    return [gate for metric, expr in gates.items() for gate in parse_gate(metric, expr)]


def lookup_metric(
    metric: str, metrics: Mapping[str, Any], earlier: Mapping[str, Mapping[str, Any]]
) -> Any:
    """Find `metric` in this stage's metrics, or `stage.metric` in an earlier stage's."""
    if metric in metrics:
        return metrics[metric]
    stage, _, name = metric.partition(".")
    if name and stage in earlier and name in earlier[stage]:
        return earlier[stage][name]
    return None


def evaluate_gates(
    gates: list[Gate],
    metrics: Mapping[str, Any],
    earlier: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Return a reason for every failing gate; an empty list means the trial passes."""
    reasons = []
    for gate in gates:
        value = lookup_metric(gate.metric, metrics, earlier or {})
        if value is None:
            reasons.append(f"{gate.metric} missing (gate {gate})")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            reasons.append(f"{gate.metric} is not a number: {value!r} (gate {gate})")
            continue
        if math.isnan(value) or not OPERATORS[gate.op](value, gate.threshold):
            reasons.append(
                f"{gate.metric} {format_number(value)} {_NEGATED[gate.op]} "
                f"{format_number(gate.threshold)}"
            )
    return reasons
