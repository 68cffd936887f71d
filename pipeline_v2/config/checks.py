"""Config checks that need the whole stage list (the models check each stage on its own)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pipeline_v2.errors import ConfigError
from pipeline_v2.gates import STUDY, STUDY_METRICS


def check_references(stages: Mapping[str, Any], source: str) -> None:
    """What only the whole stage list can tell: stages run in file order, so a deploy stage
    is last and gates and rank_by read only earlier stages."""
    names = list(stages)
    order = ", ".join(names)
    for position, (name, stage) in enumerate(stages.items()):
        earlier = names[:position]
        shown = ", ".join(earlier) or "none"
        if stage.kind == "deploy" and position != len(names) - 1:
            raise ConfigError(f"{source}: stages.{name}: a deploy stage must be the last stage "
                              f"(stages run in file order: {order})")
        for metric in stage.gates:
            prefix, dot, rest = metric.partition(".")
            if not dot or prefix in earlier:
                continue
            if prefix == STUDY:
                if rest not in STUDY_METRICS:
                    raise ConfigError(f"{source}: stages.{name}.gates.{metric}: unknown study "
                                      f"metric (expected one of {', '.join(STUDY_METRICS)})")
                continue
            what = (f'stage "{prefix}" does not run before {name}' if prefix in stages
                    else f'unknown stage "{prefix}"')
            raise ConfigError(f"{source}: stages.{name}.gates.{metric}: {what}; a gate reads "
                              f"this stage's metrics or STAGE.METRIC of an earlier stage "
                              f"(earlier stages: {shown})")
        if stage.kind == "deploy" and "rank_by" in stage.model_fields_set:
            prefix, dot, _ = stage.rank_by.partition(".")
            if stage.rank_by in ("value", "optuna.value") or (dot and prefix in earlier):
                continue
            raise ConfigError(f"{source}: stages.{name}.rank_by: expected \"value\" or "
                              f"STAGE.METRIC of an earlier stage ({shown}), got "
                              f"{json.dumps(stage.rank_by)}")
