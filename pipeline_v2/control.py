"""What the CLI's commands do, as plain functions over the config and the state DB.

These work whether or not a daemon runs: they change the state DB in short transactions, and a
running daemon picks the change up on its next turn (within a second).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_v2 import plan
from pipeline_v2.config import Config, DeployStageConfig, default_config_path, load_config
from pipeline_v2.errors import ConfigError, NotFoundError, UsageError
from pipeline_v2.models import PAUSABLE, StageRun, StageStatus, Trial, TrialStatus
from pipeline_v2.store import Store


def open_store(config: Config) -> Store:
    """The state DB named by the config, migrated to this version's schema."""
    notify = config.notify
    kinds = notify.events if (notify.webhook or notify.command) else ()
    return Store(config.state_db_path, notify_kinds=kinds)


@dataclass(frozen=True)
class InitResult:
    """What `pipeline init` did."""

    config_path: Path
    state_db: Path
    wrote_config: bool
    created_db: bool


def init_workspace(path: Path | None, force: bool) -> InitResult:
    """Write the default stages.json (if absent, or with `force`) and create the state DB."""
    path = path or default_config_path()
    wrote = False
    if force or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(Config().to_json(), indent=2) + "\n", encoding="utf-8")
        wrote = True
    config = load_config(path)
    db_path = config.state_db_path
    existed = db_path.exists()
    open_store(config).close()
    return InitResult(path, db_path, wrote, not existed)


def show_trial(store: Store, ref: str) -> dict[str, Any]:
    """A trial with its stages and audit trail."""
    trial = store.find_trial(ref)
    return {
        "trial": trial,
        "stages": store.stages_of(trial.id),
        "events": store.events_of(trial.id),
    }


def _stage_named(store: Store, trial: Trial, name: str) -> StageRun:
    stages = store.stages_of(trial.id)
    for stage in stages:
        if stage.name == name:
            return stage
    known = ", ".join(s.name for s in stages) or "none"
    raise NotFoundError(f'trial {trial.ref} has no stage "{name}" (stages: {known})')


def retry(store: Store, config: Config, ref: str, stage_name: str | None) -> list[str]:
    """Failed or rejected stage(s) back to pending with attempts reset; returns their names."""
    trial = store.find_trial(ref)
    stages = store.stages_of(trial.id)
    if stage_name is not None:
        targets = [_stage_named(store, trial, stage_name)]
    else:
        targets = [s for s in stages if s.status in (StageStatus.FAILED, StageStatus.REJECTED)]
    if not targets:
        raise UsageError(
            f"trial {trial.ref} has no failed or rejected stage to retry (status "
            f"{trial.status.value}); name one with --stage"
        )
    for stage in targets:
        if stage.status not in (StageStatus.FAILED, StageStatus.REJECTED, StageStatus.SKIPPED):
            raise UsageError(
                f"trial {trial.ref}: stage {stage.name} is {stage.status.value}; only a failed, "
                "rejected or skipped stage can be retried"
            )
    if trial.status not in (
        TrialStatus.FAILED,
        TrialStatus.REJECTED,
        TrialStatus.PROCESSING,
        TrialStatus.PASSED,
    ):
        raise UsageError(f"trial {trial.ref} is {trial.status.value}; it cannot be retried")
    first = min(s.position for s in targets)
    later = [
        s
        for s in stages
        if s.position > first
        and s.status in (StageStatus.FAILED, StageStatus.REJECTED, StageStatus.SKIPPED)
        and config.stages.get(s.name, None) is not None
        and config.stages[s.name].enabled
    ]
    reason = "; ".join(
        f"{s.name}: {s.reason or s.error_message or s.status.value}" for s in targets
    )
    store.reset_stages(
        trial,
        [*targets, *later],
        first,
        TrialStatus.PROCESSING,
        time.time(),
        f"retry by hand (was {reason})",
    )
    return [s.name for s in targets]


def skip(store: Store, config: Config, ref: str, stage_name: str) -> TrialStatus:
    """Mark a stage skipped and move the trial on; returns the trial's new status."""
    trial = store.find_trial(ref)
    stage = _stage_named(store, trial, stage_name)
    if stage.status in (StageStatus.PASSED, StageStatus.SKIPPED, StageStatus.CANCELLED):
        raise UsageError(f"trial {trial.ref}: stage {stage.name} is already {stage.status.value}")
    if stage.status == StageStatus.RUNNING:
        raise UsageError(f"trial {trial.ref}: stage {stage.name} is running; wait or cancel")
    statuses = {
        s.name: (StageStatus.SKIPPED if s.id == stage.id else s.status)
        for s in store.stages_of(trial.id)
    }
    pos, new, also_skip = plan.position_after(statuses, config)
    store.skip_stage(
        trial,
        stage,
        pos,
        None if trial.status == TrialStatus.PAUSED else new,
        time.time(),
        also_skip,
    )
    return store.get_trial(trial.id).status


def pause(store: Store, ref: str | None) -> list[str]:
    """Pause one trial, or with None every live trial and the pipeline itself."""
    now = time.time()
    if ref is None:
        store.set_setting("paused_all", "1")
        return ["all"]
    trial = store.find_trial(ref)
    if trial.status not in PAUSABLE:
        raise UsageError(f"trial {trial.ref} is {trial.status.value}; only a live trial pauses")
    store.pause_trial(trial, now)
    return [trial.ref]


def resume(store: Store, ref: str | None) -> list[str]:
    """Resume one paused trial, or with None the whole pipeline and every paused trial."""
    now = time.time()
    if ref is None:
        store.set_setting("paused_all", None)
        resumed = store.list_trials(TrialStatus.PAUSED.value)
        for trial in resumed:
            store.resume_trial(trial, now)
        return ["all", *(t.ref for t in resumed)]
    trial = store.find_trial(ref)
    if trial.status != TrialStatus.PAUSED:
        raise UsageError(f"trial {trial.ref} is {trial.status.value}, not paused")
    store.resume_trial(trial, now)
    return [trial.ref]


def cancel(store: Store, ref: str) -> str:
    """Cancel a trial for good; a running attempt is killed by the daemon."""
    trial = store.find_trial(ref)
    if trial.status == TrialStatus.CANCELLED:
        raise UsageError(f"trial {trial.ref} is already cancelled")
    store.cancel_trial(trial, time.time())
    return trial.ref


def check_config(path: Path | None) -> Config:
    """Load and validate; also check that every `run` callable imports."""
    config = load_config(path)
    for name, stage in config.stages.items():
        if stage.run and not isinstance(stage, DeployStageConfig):
            try:
                plan_import(stage.run)
            except ImportError as exc:
                raise ConfigError(f"{config.source}: stages.{name}.run: {exc}") from None
    return config


def plan_import(target: str) -> Any:
    """Import "module:function" or raise ImportError with a message naming it."""
    from pipeline_v2.stages.runner import import_callable

    return import_callable(target)


def backtest_adhoc(data: Path, strategy: str, params: dict[str, Any], commission: float | None,
                   slippage: float | None, start: str | None, end: str | None) -> dict[str, Any]:
    """`pipeline backtest --data ... --strategy ...`: metrics of one ad hoc run."""
    from pipeline_v2.backtest import DEFAULT_COMMISSION, DEFAULT_SLIPPAGE, backtest, load_bars

    bars = load_bars(data).window(start, end)
    cost = DEFAULT_COMMISSION if commission is None else commission
    slip = DEFAULT_SLIPPAGE if slippage is None else slippage
    return backtest(bars, strategy, params, cost, slip)[0]


def backtest_trial(config: Config, store: Store, ref: str, overrides: dict[str, Any]
                   ) -> dict[str, Any]:
    """`pipeline backtest TRIAL`: the trial's model through the configured backtest stage."""
    from pipeline_v2.stages import builtin
    from pipeline_v2.stages.context import StageContext
    from pipeline_v2.stages.templates import trial_dir

    trial = store.find_trial(ref)
    builtin_run = "pipeline_v2.stages.builtin:backtest"
    name, stage = next(
        ((n, s) for n, s in config.stages.items() if s.run == builtin_run), (None, None)
    )
    params = dict(stage.params if stage else {})
    params.update({k: v for k, v in overrides.items() if v is not None})
    run_dir = trial_dir(config.logs_path, trial) / "adhoc"
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        study=trial.study, number=trial.number, params=trial.params, user_attrs=trial.user_attrs,
        value=trial.value, model_dir=Path(trial.model_dir), run_dir=run_dir,
        stage=name or "backtest", stage_params=params, results=store.stage_results(trial.id),
        values=trial.values, trial_id=trial.optuna_trial_id, storage=config.storage_url,
        config_dir=Path(config.base_dir), log=_QuietLog(),
    )
    return builtin.backtest(ctx)


class _QuietLog:
    """A stand-in for the stage logger when a backtest runs from the CLI."""

    def info(self, *args: Any, **kwargs: Any) -> None:
        """Discard."""


def deploy(store: Store, config: Config, ref: str) -> str:
    """Deploy a trial by hand: a free slot, or it replaces the lowest-ranked deployed trial."""
    from pipeline_v2.deployer import BY_HAND
    from pipeline_v2.stages.templates import trial_dir

    found = config.deploy_stage
    if found is None:
        raise UsageError("no deploy stage in the config (a stage named deploy or with "
                         '"kind": "deploy")')
    trial = store.find_trial(ref)
    if store.live_deployment(trial.id) is not None:
        raise UsageError(f"trial {trial.ref} is already deployed")
    if trial.status not in (TrialStatus.PASSED, TrialStatus.RETIRED):
        raise UsageError(f"trial {trial.ref} is {trial.status.value}; only a passed or retired "
                         "trial can be deployed")
    run_dir = trial_dir(config.logs_path, trial, "deployments")
    store.begin_deployment(trial.id, found[0], str(run_dir), time.time(), BY_HAND)
    return trial.ref


def stop(store: Store, config: Config, ref: str | None, wait: bool = True) -> list[str]:
    """Stop deployed traders by hand (one, or all with None); their trials are retired.

    A running daemon stops them within a second. With no daemon, this process does it:
    SIGTERM to the group, `stop_grace_seconds`, then SIGKILL — identity-checked.
    """
    from pipeline_v2.lock import daemon_pid
    from pipeline_v2.models import DeploymentStatus, StageStatus
    from pipeline_v2.supervisor import Identity, is_alive, signal_group

    deps = store.deployments("starting", "running", "backoff", "stopping")
    if ref is not None:
        trial = store.find_trial(ref)
        deps = [d for d in deps if d.trial_id == trial.id]
        if not deps:
            raise UsageError(f"trial {trial.ref} has no running deployment")
    found = config.deploy_stage
    stage_name = found[0] if found else "deploy"
    grace = found[1].stop_grace_seconds if found else 10.0
    now = time.time()
    for dep in deps:
        store.finish_deployment(dep.trial_id, stage_name, TrialStatus.RETIRED,
                                StageStatus.CANCELLED, now, "stopped by hand")
    if daemon_pid(config.state_db_path) is not None or not wait:
        return [store.get_trial(d.trial_id).ref for d in deps]
    for dep in deps:  # no daemon: do it here
        if dep.pid is not None and dep.create_time is not None and dep.boot_id:
            identity = Identity(dep.pid, dep.create_time, dep.boot_id)
            signal_group(identity, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while is_alive(identity) and time.monotonic() < deadline:
                time.sleep(0.05)
            signal_group(identity, signal.SIGKILL)
        current = store.get_deployment(dep.id)
        if current.status in (DeploymentStatus.STARTING, DeploymentStatus.RUNNING):
            current = store.set_deployment_status(current, DeploymentStatus.STOPPING, now,
                                                  "stopped by hand")
        if current.status in (DeploymentStatus.STOPPING, DeploymentStatus.BACKOFF):
            store.set_deployment_status(current, DeploymentStatus.STOPPED, time.time(),
                                        "stopped by hand", reason="stopped by hand")
    return [store.get_trial(d.trial_id).ref for d in deps]

