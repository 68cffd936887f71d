"""`pipeline` commands over a workspace: init, status, trials, the daemon, trial controls."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from pipeline_v2.cli.common import (
    ConfigPath,
    JsonFlag,
    TrialRef,
    command,
    console,
    control,
    emit,
    fail,
    given,
    load_config,
    log_to_file,
    open_workspace,
    render,
    render_json,
)
from pipeline_v2.errors import UsageError

# ---------------------------------------------------------------------------------------------
# Workspace and status


@command()
def init(
    config: ConfigPath = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rewrite the config (never the DB).")
    ] = False,
) -> None:
    """Write a default stages.json (if absent) and create the state DB."""
    result = control.init_workspace(config, force)
    if not result.wrote_config and not result.created_db:
        typer.echo(
            f"Nothing to do: {result.config_path} and {result.state_db} already exist "
            "(--force rewrites the config)."
        )
        return
    if result.wrote_config:
        typer.echo(f"Wrote {result.config_path}")
    else:
        typer.echo(f"Kept {result.config_path} (--force rewrites it)")
    typer.echo(f"{'Created' if result.created_db else 'Kept'} state DB {result.state_db}")


@command()
def status(
    ctx: typer.Context,
    config: ConfigPath = None,
    json_: JsonFlag = False,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Refresh every --interval seconds until Ctrl-C (not on a terminal: "
        "print one snapshot per interval; with --json one JSON line each).")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1,
                                            help="Seconds between --watch refreshes.")] = 2.0,
) -> None:
    """Pipeline health, trial and stage counts, and deployments."""
    if not watch and given(ctx, "interval"):
        raise UsageError(f'--interval: only applies with --watch (got "{interval:g}" without '
                         "--watch)")
    from pipeline_v2.status import snapshot

    cfg, store = open_workspace(config, reading=True)
    if not watch:
        emit(snapshot(store, cfg, time.time()), json_, lambda d: render.status_view(d))
        return
    from rich.live import Live

    try:
        if json_ or not sys.stdout.isatty():  # a pipe or a log: a snapshot per interval
            while True:
                data = snapshot(store, cfg, time.time())
                if json_:
                    typer.echo(json.dumps(render_json.jsonable(data), default=str))
                else:
                    console().print(render.status_view(data))
                sys.stdout.flush()
                time.sleep(interval)
        with Live(render.status_view(snapshot(store, cfg, time.time())), console=console()) as live:
            while True:
                time.sleep(interval)
                live.update(render.status_view(snapshot(store, cfg, time.time())))
    except KeyboardInterrupt:
        pass


@command()
def trials(
    config: ConfigPath = None,
    status_: Annotated[
        str | None, typer.Option("--status", help="Only trials in this status.")
    ] = None,
    json_: JsonFlag = False,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="Print one JSON object per line.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many trials.")
    ] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many first.")] = 0,
) -> None:
    """List trials in discovery order, optionally of one status; JSON is streamed."""
    from pipeline_v2.models import TrialStatus

    if status_ is not None and status_ not in {s.value for s in TrialStatus}:
        raise UsageError(
            f'--status: unknown status "{status_}" (expected one of '
            f"{', '.join(s.value for s in TrialStatus)})"
        )
    if json_ and jsonl:
        raise UsageError("--json and --jsonl: choose one")
    _, store = open_workspace(config, reading=True)
    found = store.iter_trials(status_, limit, offset)
    if json_ or jsonl:
        render_json.stream_json(found, sys.stdout, lines=jsonl)
    else:
        console().print(render.trials_table(list(found)))


@command()
def show(trial: TrialRef, config: ConfigPath = None, json_: JsonFlag = False) -> None:
    """One trial: its stages, results and audit trail."""
    _, store = open_workspace(config, reading=True)
    data = control.show_trial(store, trial)
    emit(data, json_, lambda d: render.trial_view(d["trial"], d["stages"], d["events"]))


@command()
def discover(config: ConfigPath = None, json_: JsonFlag = False) -> None:
    """Run one discovery pass now: record newly completed Optuna trials."""
    from pipeline_v2.discovery import Discovery

    cfg, store = open_workspace(config)
    log_to_file(cfg)  # a study that fails to read logs its traceback: not onto stdout
    result = Discovery(cfg, store).poll()
    if result.errors and not result.new:  # the storage itself failed: the one line, no summary
        raise fail(result.errors[0])
    if json_:
        typer.echo(render_json.to_json(result))
    else:
        for study, n in result.new.items():
            typer.echo(f"{study}: {n} new trial(s)")
        for name in result.missing:
            typer.echo(f"{name}: not in the storage (yet)")
        typer.echo(f"{result.total} new in {result.seconds * 1000:.1f} ms")
    if result.errors:  # a study failed; what the others found is recorded and shown above
        raise fail(result.errors[0])


@command(name="run-daemon")
def run_daemon(
    config: ConfigPath = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run one turn of the loop, then exit.")
    ] = False,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit 0 when nothing is due, running or waiting.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Stop after this many seconds.")
    ] = None,
) -> None:
    """Run the pipeline loop: discover, run stages, supervise deployments."""
    from pipeline_v2 import daemon, logs

    if once and until_idle:
        raise UsageError("--once and --until-idle: choose one")
    cfg = load_config(config)
    logs.configure(cfg.logs_path, max_bytes=cfg.daemon.log_max_bytes,
                   backups=cfg.daemon.log_backups)
    mode: daemon.Mode = "once" if once else "until_idle" if until_idle else "forever"
    summary = daemon.run_daemon(config, mode, timeout)
    typer.echo(f"daemon stopped ({summary.reason}): {summary.turns} turns, "
               f"{summary.attempts} attempts started", err=True)


@command()
def retry(
    trial: TrialRef,
    config: ConfigPath = None,
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage.")] = None,
) -> None:
    """Put a failed or rejected stage back to pending, attempts reset."""
    cfg, store = open_workspace(config)
    names = control.retry(store, cfg, trial, stage)
    typer.echo(f"{trial}: {', '.join(names)} back to pending")


@command()
def skip(
    trial: TrialRef,
    stage: Annotated[str, typer.Argument(help="Stage name.", show_default=False)],
    config: ConfigPath = None,
) -> None:
    """Mark a stage skipped and move the trial on."""
    cfg, store = open_workspace(config)
    status_ = control.skip(store, cfg, trial, stage)
    typer.echo(f"{trial}: {stage} skipped; trial is {status_.value}")


PauseAll = Annotated[bool, typer.Option(
    "--all", help="Pause the whole pipeline: no attempt or deployment starts for any trial "
    "until resume --all (trials keep their status; running traders keep running).")]
ResumeAll = Annotated[bool, typer.Option(
    "--all", help="Resume the whole pipeline; trials paused one by one stay paused "
    "(resume each by name).")]
StopAll = Annotated[bool, typer.Option(
    "--all", help="Stop every deployed trader (their trials are retired).")]
OptionalTrial = Annotated[
    str | None, typer.Argument(help="Trial number, or study:number.", show_default=False)
]


def _one_or_all(command_: str, trial: str | None, all_: bool) -> str | None:
    """TRIAL or --all, exactly one (checked before the workspace is opened)."""
    if trial is None and not all_:
        raise UsageError(f"pipeline {command_}: missing TRIAL (trial number, or study:number) "
                         "or --all")
    if trial is not None and all_:
        raise UsageError(f'pipeline {command_}: TRIAL "{trial}" and --all: choose one')
    return trial


@command()
def pause(trial: OptionalTrial = None, all_: PauseAll = False, config: ConfigPath = None) -> None:
    """Pause a trial (nothing new starts for it; its trader stops), or the pipeline (--all)."""
    ref = _one_or_all("pause", trial, all_)
    _, store = open_workspace(config)
    done = control.pause(store, ref)
    typer.echo(f"paused: {', '.join(done)}" if ref else
               "paused: the pipeline (nothing new starts; trials keep their status)")


@command()
def resume(trial: OptionalTrial = None, all_: ResumeAll = False,
           config: ConfigPath = None) -> None:
    """Resume a paused trial, or the pipeline (--all; trials paused one by one stay paused)."""
    ref = _one_or_all("resume", trial, all_)
    _, store = open_workspace(config)
    done = control.resume(store, ref)
    if ref:
        typer.echo(f"resumed: {', '.join(done)}")
    else:
        still = f"; still paused one by one: {', '.join(done)}" if done else ""
        typer.echo(f"resumed: the pipeline{still}")


@command()
def cancel(trial: TrialRef, config: ConfigPath = None) -> None:
    """Cancel a trial for good; a running attempt is killed."""
    _, store = open_workspace(config)
    typer.echo(f"cancelled: {control.cancel(store, trial)}")


@command()
def deploy(trial: TrialRef, config: ConfigPath = None) -> None:
    """Deploy a trial to paper trading by hand (replacing the worst if the slots are full)."""
    cfg, store = open_workspace(config)
    typer.echo(f"deploying: {control.deploy(store, cfg, trial)}")


@command()
def stop(trial: OptionalTrial = None, all_: StopAll = False, config: ConfigPath = None) -> None:
    """Stop a deployed trader (or --all); its trial is retired."""
    ref = _one_or_all("stop", trial, all_)
    cfg, store = open_workspace(config)
    stopped = control.stop(store, cfg, ref)
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")
