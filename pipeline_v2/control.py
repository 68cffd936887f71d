"""What the CLI's commands do, as plain functions over the config and the state DB.

These work whether or not a daemon runs: they change the state DB in short transactions, and a
running daemon picks the change up at once (the CLI's store wakes it through wake.py).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_v2 import plan
from pipeline_v2.config import Config, DeployStageConfig, default_config_path, load_config
from pipeline_v2.errors import ConfigError, NotFoundError, PipelineError, Reject, UsageError
from pipeline_v2.models import PAUSABLE, StageRun, StageStatus, Trial, TrialStatus
from pipeline_v2.stages.imports import import_callable
from pipeline_v2.store import Store, open_store


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
    """Failed or rejected stage(s) back to pending with attempts reset; returns their names.

    A retried deploy stage is not run as a stage: the trial goes back to `passed` and waits
    for the deployer to promote it like any other passed trial.
    """
    trial = store.find_trial(ref)
    stages = store.stages_of(trial.id)
    retryable = (StageStatus.FAILED, StageStatus.REJECTED, StageStatus.SKIPPED)
    if stage_name is not None:
        targets = [_stage_named(store, trial, stage_name)]
    else:
        targets = [s for s in stages if s.status in (StageStatus.FAILED, StageStatus.REJECTED)]
    if not targets:
        raise UsageError(
            f"trial {trial.ref} has no failed or rejected stage to retry (it is "
            f"{trial.status.value}); name a skipped one with --stage"
        )
    for stage in targets:
        if stage.status not in retryable:
            raise UsageError(
                f"trial {trial.ref}: stage {stage.name} is {stage.status.value}; retry needs "
                "a failed, rejected or skipped stage"
            )
    allowed = (TrialStatus.FAILED, TrialStatus.REJECTED, TrialStatus.PROCESSING,
               TrialStatus.PASSED, TrialStatus.RETIRED)
    if trial.status not in allowed:
        raise UsageError(f"trial {trial.ref} is {trial.status.value}; retry needs a failed, "
                         "rejected, processing, passed or retired trial")
    first = min(s.position for s in targets)
    later = [
        s
        for s in stages
        if s.position > first
        and s.status in retryable
        and config.stages.get(s.name, None) is not None
        and config.stages[s.name].enabled
    ]
    reset = [*targets, *(s for s in later if s not in targets)]
    reset_ids = {s.id for s in reset}
    statuses = {s.name: (StageStatus.PENDING if s.id in reset_ids else s.status)
                for s in stages}
    position, status, _ = plan.position_after(statuses, config)
    reason = "; ".join(
        f"{s.name}: {s.reason or s.error_message or s.status.value}" for s in targets
    )
    store.reset_stages(trial, reset, position, status, time.time(),
                       f"retry by hand (was {reason})")
    return [s.name for s in targets]


def skip(store: Store, config: Config, ref: str, stage_name: str) -> TrialStatus:
    """Mark a stage skipped and move the trial on; returns the trial's new status."""
    trial = store.find_trial(ref)
    stage = _stage_named(store, trial, stage_name)
    skippable = (TrialStatus.PENDING, TrialStatus.PROCESSING, TrialStatus.PASSED,
                 TrialStatus.REJECTED, TrialStatus.FAILED, TrialStatus.PAUSED)
    if trial.status not in skippable:
        hint = " (stop it first)" if trial.status == TrialStatus.DEPLOYED else ""
        raise UsageError(f"trial {trial.ref} is {trial.status.value}; skip needs a pending, "
                         f"processing, passed, rejected, failed or paused trial{hint}")
    if stage.status in (StageStatus.PASSED, StageStatus.SKIPPED, StageStatus.CANCELLED):
        raise UsageError(f"trial {trial.ref}: stage {stage.name} is already "
                         f"{stage.status.value}; skip needs a pending, failed or rejected stage")
    if stage.status == StageStatus.RUNNING:
        raise UsageError(f"trial {trial.ref}: stage {stage.name} is running; wait or cancel")
    statuses = {
        s.name: (StageStatus.SKIPPED if s.id == stage.id else s.status)
        for s in store.stages_of(trial.id)
    }
    pos, new, also_skip = plan.position_after(statuses, config)
    if trial.status in (TrialStatus.FAILED, TrialStatus.REJECTED) and new == trial.status:
        ended = next(s for s in store.stages_of(trial.id)
                     if s.status.value == trial.status.value)
        raise UsageError(f"trial {trial.ref} is {trial.status.value} at stage {ended.name}; "
                         f"skip {ended.name} itself, or retry it first")
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
    """Pause one trial, or with None the whole pipeline (trials keep their status)."""
    now = time.time()
    if ref is None:
        store.set_setting("paused_all", "1")
        return []
    trial = store.find_trial(ref)
    if trial.status not in PAUSABLE:
        raise UsageError(f"trial {trial.ref} is {trial.status.value}; pause needs a pending, "
                         "processing, passed or deployed trial")
    store.pause_trial(trial, now)
    return [trial.ref]


def resume(store: Store, ref: str | None) -> list[str]:
    """Resume one paused trial, or with None the pipeline only: returns, for None, the trials
    paused one by one, which stay paused."""
    now = time.time()
    if ref is None:
        store.set_setting("paused_all", None)
        return [t.ref for t in store.list_trials(TrialStatus.PAUSED.value)]
    trial = store.find_trial(ref)
    if trial.status != TrialStatus.PAUSED:
        raise UsageError(f"trial {trial.ref} is {trial.status.value}; resume needs a paused "
                         "trial")
    store.resume_trial(trial, now)
    return [trial.ref]


def cancel(store: Store, ref: str) -> str:
    """Cancel a trial for good; a running attempt is killed by the daemon."""
    trial = store.find_trial(ref)
    if trial.status == TrialStatus.CANCELLED:
        raise UsageError(f"trial {trial.ref} is already cancelled (cancelling is final)")
    store.cancel_trial(trial, time.time())
    return trial.ref


def check_config(path: Path | None) -> Config:
    """Load and validate; also check that every `run` callable and strategy plug-in imports —
    from the config's folder, as the workers import them."""
    config = load_config(path)
    if config.base_dir not in sys.path:
        sys.path.insert(0, config.base_dir)
    for name, stage in config.stages.items():
        if stage.run and not isinstance(stage, DeployStageConfig):
            try:
                import_callable(stage.run)
            except ImportError as exc:
                raise ConfigError(f"{config.source}: stages.{name}.run: {exc}") from None
        check_stage_strategy(config, name)
    return config


def check_stage_strategy(config: Config, name: str) -> None:
    """A strategy in a builtin stage's params, or any plug-in name, must resolve (in this
    process: only `config check` imports user code; the daemon leaves that to its workers)."""
    from pipeline_v2.backtest.errors import StrategyError
    from pipeline_v2.backtest.plugins import check_name, is_plugin

    stage = config.stages[name]
    strategy = stage.params.get("strategy")
    builtin = (stage.run or "").startswith("pipeline_v2.stages.builtin:")
    if strategy is None or not (builtin or (isinstance(strategy, str) and is_plugin(strategy))):
        return
    try:
        check_name(strategy)
    except StrategyError as exc:
        raise ConfigError(f"{config.source}: stages.{name}.params.strategy: {exc}") from None


def backtest_adhoc(data: Path, strategy: str, params: dict[str, Any], commission: float | None,
                   slippage: float | None, start: str | None, end: str | None) -> dict[str, Any]:
    """`pipeline backtest --data ... --strategy ...`: metrics of one ad hoc run."""
    from pipeline_v2.backtest import DEFAULT_COMMISSION, DEFAULT_SLIPPAGE, backtest, load_bars
    from pipeline_v2.backtest.plugins import load_strategy, warmup_bars

    strat = load_strategy(strategy, params)
    history = warmup_bars(strat)  # indicators warm up on the bars before `start`
    bars, trade_from = load_bars(data).window_with_history(start, end, history)
    cost = DEFAULT_COMMISSION if commission is None else commission
    slip = DEFAULT_SLIPPAGE if slippage is None else slippage
    return backtest(bars, strat, {}, cost, slip, trade_from=trade_from, lookahead=True)[0]


def backtest_trial(config: Config, store: Store, ref: str, overrides: dict[str, Any]
                   ) -> dict[str, Any]:
    """`pipeline backtest TRIAL`: the trial's model through the configured backtest stage."""
    from pipeline_v2.paths import trial_dir
    from pipeline_v2.stages import builtin
    from pipeline_v2.stages.context import StageContext, build_stage_context

    trial = store.find_trial(ref)
    builtin_run = "pipeline_v2.stages.builtin:backtest"
    name, stage = next(
        ((n, s) for n, s in config.stages.items() if s.run == builtin_run), (None, None)
    )
    params = dict(stage.params if stage else {})
    params.update({k: v for k, v in overrides.items() if v is not None})
    run_dir = trial_dir(config.logs_path, trial) / "adhoc"
    run_dir.mkdir(parents=True, exist_ok=True)
    fields = build_stage_context(
        trial, stage=name or "backtest", stage_params=params, run_dir=run_dir,
        results=store.stage_results(trial.id), attempt=1, storage=config.storage_url,
        config_dir=config.base_dir)
    ctx = StageContext.from_fields(fields, _QuietLog())
    try:
        return builtin.backtest(ctx)
    except Reject as exc:  # a verdict (look-ahead), not a crash: one line, exit 1
        raise PipelineError(f"trial {trial.ref}: rejected: {exc.reason}") from None


class _QuietLog:
    """A stand-in for the stage logger when a backtest runs from the CLI."""

    def info(self, *args: Any, **kwargs: Any) -> None:
        """Discard."""


def deploy(store: Store, config: Config, ref: str) -> str:
    """Deploy (or redeploy) a trial by hand, pinned: a free slot, else it replaces exactly one
    trader, the lowest-ranked deployed one, at its own first heartbeat."""
    from pipeline_v2.paths import trial_dir
    from pipeline_v2.promotion import BY_HAND

    found = config.deploy_stage
    if found is None:
        raise UsageError("no deploy stage in the config (a stage named deploy or with "
                         '"kind": "deploy")')
    trial = store.find_trial(ref)
    if found[0] not in {s.name for s in store.stages_of(trial.id)}:
        raise UsageError(f'trial {trial.ref} has no "{found[0]}" stage (it was discovered before '
                         "the deploy stage was configured); only trials discovered since can "
                         "be deployed")
    if store.live_deployment(trial.id) is not None:
        raise UsageError(f"trial {trial.ref} is already deployed; stop it first to redeploy")
    allowed = (TrialStatus.PASSED, TrialStatus.RETIRED, TrialStatus.FAILED)
    stage = next((s for s in store.stages_of(trial.id) if s.name == found[0]), None)
    if trial.status not in allowed or stage is None:
        raise UsageError(f"trial {trial.ref} is {trial.status.value}; deploy needs a passed, "
                         "retired or failed trial")
    if trial.status == TrialStatus.FAILED and stage.status != StageStatus.FAILED:
        raise UsageError(f"trial {trial.ref} failed before its {found[0]} stage; deploy needs "
                         "a passed, retired or failed-in-deployment trial (retry it first)")
    run_dir = trial_dir(config.logs_path, trial, "deployments")
    store.begin_deployment(trial.id, found[0], str(run_dir), time.time(), BY_HAND, pinned=True)
    return trial.ref


def stop(store: Store, config: Config, ref: str | None, wait: bool = True) -> list[str]:
    """Stop deployed traders by hand (one, or all with None); their trials are retired.

    One transaction records it all (trials retired, traders `stopping`); then SIGTERM goes to
    each trader whose shim is ours. A running daemon finishes the job (SIGKILL after
    `stop_grace_seconds`); with no daemon, this process waits, then kills the whole tree.
    """
    from pipeline_v2.lifecycle import SHIM_EXIT_S, identity_of
    from pipeline_v2.lock import daemon_pid
    from pipeline_v2.models import ACTIVE_DEPLOYMENT
    from pipeline_v2.models import DeploymentStatus as D
    from pipeline_v2.supervisor import (
        is_alive,
        kill_trader,
        read_exit_code,
        shim_for,
        signal_trader,
    )

    deps = store.deployments(*sorted(ACTIVE_DEPLOYMENT | {D.CRASHED}))
    if ref is not None:
        trial = store.find_trial(ref)
        deps = [d for d in deps if d.trial_id == trial.id]
        if not deps:
            raise UsageError(f"trial {trial.ref} has no running deployment (it is "
                             f"{trial.status.value}); stop needs a deployed trial")
    found = config.deploy_stage
    stage_name = found[0] if found else "deploy"
    grace = found[1].stop_grace_seconds if found else 10.0
    now, why = time.time(), "stopped by hand"
    stopping = []
    with store.transaction():
        for dep in deps:
            store.finish_deployment(dep.trial_id, stage_name, TrialStatus.RETIRED,
                                    StageStatus.CANCELLED, now, why)
            if dep.status in (D.STARTING, D.RUNNING):
                dep = store.set_deployment_status(dep, D.STOPPING, now, why, reason=why,
                                                  kill_at=now + grace)
            elif dep.status in (D.BACKOFF, D.CRASHED):
                store.set_deployment_status(dep, D.STOPPED, now, why, reason=why)
                continue
            stopping.append(dep)
    refs = [store.get_trial(d.trial_id).ref for d in deps]
    shims = {d.id: shim_for(identity_of(d), Path(d.run_dir)) for d in stopping}
    for dep in stopping:
        shim = shims[dep.id]
        if shim is not None:
            signal_trader(shim, Path(dep.run_dir), signal.SIGTERM)
    if daemon_pid(config.state_db_path) is not None or not wait:
        return refs
    for dep in stopping:  # no daemon: do it here
        shim, run_dir = shims[dep.id], Path(dep.run_dir)
        if shim is not None:
            _wait_gone(shim, grace)
            if is_alive(shim):  # the whole tree, wherever its session; the shim reaps it
                kill_trader(shim, run_dir)
                _wait_gone(shim, SHIM_EXIT_S)
            if is_alive(shim):
                kill_trader(shim, run_dir, shim_too=True)
        current = store.get_deployment(dep.id)
        if current.status == D.STOPPING:
            store.set_deployment_status(current, D.STOPPED, time.time(), why,
                                        last_exit=read_exit_code(run_dir))
    return refs


def _wait_gone(identity: Any, seconds: float) -> None:
    """Wait up to `seconds` for a process to end."""
    from pipeline_v2.supervisor import is_alive

    deadline = time.monotonic() + seconds
    while is_alive(identity) and time.monotonic() < deadline:
        time.sleep(0.05)


def build_report(store: Store, config: Config, ref: str | None
                 ) -> tuple[dict[str, Any], Callable[[dict[str, Any]], str]]:
    """`pipeline report [TRIAL]`: the report's data and the function that makes its HTML."""
    from pipeline_v2.reports import html
    from pipeline_v2.reports.pipeline import full_report
    from pipeline_v2.reports.trial import trial_report

    if ref is None:
        return full_report(store, config), html.pipeline_html
    return trial_report(store, config, ref), html.trial_html


def write_text(path: Path, text: str, option: str) -> None:
    """Write a file the user named; an OSError becomes one line naming the option."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise PipelineError(f'{option}: cannot write "{path}": {exc.strerror or exc}') from None
