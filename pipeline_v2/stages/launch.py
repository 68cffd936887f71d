"""What a claimed attempt is handed to the runner as: a callable's task or a command's argv/env."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_v2.config import Config, StageConfig
from pipeline_v2.logs import get_logger
from pipeline_v2.models import StageRun, Trial
from pipeline_v2.processes import CLAIM_ENV, kill_tagged
from pipeline_v2.stages.context import build_stage_context
from pipeline_v2.store import Store
from pipeline_v2.supervisor import Identity, signal_group
from pipeline_v2.templates import render_argv, template_fields

log = get_logger("daemon")


def claim_token(state_db: Path, stage: StageRun) -> str:
    """Names one attempt; every process of a command stage carries it in its environment."""
    return f"{state_db}#{stage.id}#{stage.attempts}"


@dataclass(frozen=True)
class CommandLaunch:
    """A command stage ready to start."""

    argv: list[str]
    env: dict[str, str]
    result_file: Path


def callable_task(config: Config, cfg: StageConfig, stage: StageRun, trial: Trial,
                  run_dir: Path, log_path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The task a worker process runs for a callable stage."""
    context = build_stage_context(
        trial, stage=stage.name, stage_params=cfg.params, run_dir=run_dir, results=results,
        attempt=stage.attempts, storage=config.storage_url, config_dir=config.base_dir)
    return {"target": cfg.run, "context": context, "log_path": str(log_path)}


def command_launch(config: Config, cfg: StageConfig, stage: StageRun, trial: Trial,
                   run_dir: Path) -> CommandLaunch:
    """A command stage's argv (each element formatted on its own) and environment."""
    argv = render_argv(cfg.command or [], template_fields(trial, run_dir))
    result_file = run_dir / f"{stage.name}.result.json"
    env = dict(os.environ, PIPELINE_RESULT_FILE=str(result_file), PIPELINE_RUN_DIR=str(run_dir),
               PIPELINE_STAGE=stage.name, PIPELINE_TRIAL=trial.ref,
               PIPELINE_ATTEMPT=str(stage.attempts),
               PIPELINE_STAGE_PARAMS=json.dumps(cfg.params))
    env[CLAIM_ENV] = claim_token(config.state_db_path, stage)
    return CommandLaunch(argv, env, result_file)


def kill_leftovers(store: Store, state_db: Path, stage: StageRun) -> None:
    """What is left of an attempt a dead daemon ran: its recorded process group (identity-
    checked), then anything carrying its claim token."""
    proc = store.stage_process(stage.id)
    if proc is not None and signal_group(Identity(*proc), signal.SIGKILL):
        log.warning("leftover_killed", stage_id=stage.id, pid=proc[0])
    since = stage.started_at if stage.started_at is not None else 0.0
    killed = kill_tagged(claim_token(state_db, stage), since)
    if killed:
        log.warning("leftover_killed", stage_id=stage.id, pids=killed)
