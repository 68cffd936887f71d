"""Operator commands: health, logs, systemd-unit, import-v1, dashboard. Registered on `cli.app`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline_v2.cli.common import (
    ConfigPath,
    JsonFlag,
    command,
    emit,
    load_config,
    log_to_file,
    open_workspace,
    render_ops,
)
from pipeline_v2.errors import PipelineError, UsageError


@command()
def health(config: ConfigPath = None, json_: JsonFlag = False) -> None:
    """Each component's health; exit 0 healthy, 1 degraded, 2 down (for cron and monitoring)."""
    from pipeline_v2.health import EXIT_CODES, Overall
    from pipeline_v2.status import health_report

    cfg, store = open_workspace(config, existing=True)
    report = health_report(store, cfg, time.time())
    emit(report, json_, lambda r: render_ops.health_view(r))
    code = EXIT_CODES[Overall(report["status"])]
    if code:
        raise typer.Exit(code)


@command()
def logs(
    trial: Annotated[str | None, typer.Argument(
        help="A trial (number or study:number); omit for the daemon's log.",
        show_default=False)] = None,
    config: ConfigPath = None,
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage.")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing new lines (across rotations) until Ctrl-C.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Last N lines first.")] = 50,
    json_: JsonFlag = False,
) -> None:
    """The daemon's log, or one trial's events, stage output and trader log by time."""
    from pipeline_v2 import logview

    if stage is not None and trial is None:
        raise UsageError("--stage needs a TRIAL")
    if trial is None:
        cfg = load_config(config)
        history = logview.tail_daemon(cfg, lines) if lines else []
        files = [(logview.daemon_log(cfg), "daemon")]
    else:
        cfg, store = open_workspace(config, reading=True)
        keep = lines or None  # each source's last N hold the merged last N: bounded memory
        events, trial_files = logview.trial_sources(store, cfg, trial, stage, keep)
        store.close()
        history = logview.interleave(
            [events, *(logview.read_file(*f, keep=keep) for f in trial_files)], lines)
        files = [(path, name) for path, name, _ in trial_files]
    follower = logview.Follower(files) if follow else None  # opened before printing history

    def show(line: logview.LogLine) -> None:
        text = json.dumps(line.to_json(), default=str) if json_ else logview.format_line(line)
        typer.echo(text)

    for line in history:
        show(line)
    if follower is None:
        return
    try:
        for line in follower.follow():
            show(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@command(name="systemd-unit")
def systemd_unit(
    config: ConfigPath = None,
    user: Annotated[bool, typer.Option("--user", help="A user unit (systemctl --user).")] = False,
    install: Annotated[bool, typer.Option(
        "--install", help="Write it where systemd looks and print the two enable commands.")]
    = False,
) -> None:
    """Print the systemd unit that runs this install's daemon (or --install it)."""
    from pipeline_v2 import systemd_unit as unit
    from pipeline_v2.config import default_config_path
    from pipeline_v2.daemon import DEFAULT_SHUTDOWN_GRACE_S

    path = config or default_config_path()
    cfg = load_config(path)
    plan = unit.render_unit(cfg, path, user, DEFAULT_SHUTDOWN_GRACE_S)
    if not install:
        typer.echo(plan.text, nl=False)
        return
    try:
        written = unit.install_unit(plan)
    except OSError as exc:
        raise PipelineError(f"{plan.path}: cannot write the unit: {exc.strerror} "
                            "(run as root, or pass --user)") from None
    cfg.logs_path.mkdir(parents=True, exist_ok=True)  # ReadWritePaths must exist
    typer.echo(f"wrote {written}; enable it with:")
    for line in plan.commands:
        typer.echo(f"  {line}")


@command(name="import-v1")
def import_v1(
    path: Annotated[Path, typer.Argument(
        help="The V1 JSON state file, or the earlier V2 SQLite DB.", show_default=False)],
    config: ConfigPath = None,
    study: Annotated[str | None, typer.Option(
        "--study", help="The study those trial numbers belong to.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would happen; write "
                                          "nothing.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Import the previous systems' trials, verdicts kept; a second run changes nothing."""
    from pipeline_v2 import import_v1 as importer

    cfg, store = open_workspace(config)
    report = importer.import_v1(store, cfg, path, study, dry_run)
    if json_:
        emit(importer.summarize(report), True)
        return
    verb = "would import" if dry_run else "imported"
    for ref, status_ in report.imported:
        typer.echo(f"{verb} {ref} ({status_})")
    for ref, why in report.skipped:
        typer.echo(f"skipped {ref}: {why}")
    for note in report.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"{report.source}: {len(report.imported)} {verb}, {len(report.skipped)} skipped"
               + (" (dry run: nothing written)" if dry_run else ""))


@command()
def dashboard(
    config: ConfigPath = None,
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="Port on 127.0.0.1 (0: any free one).")] = 8765,
) -> None:
    """Serve the dashboard from the state DB (for when no daemon serves it) until Ctrl-C."""
    import signal
    import threading

    from pipeline_v2.http.server import HttpService

    cfg, store = open_workspace(config)  # creates and migrates the state DB if needed
    store.close()
    log_to_file(cfg, console=True)  # not a debug line per request on stdout
    service = HttpService(lambda: cfg, address=f"127.0.0.1:{port}")
    if not service.start():
        raise PipelineError(f'--port: cannot serve on 127.0.0.1:{port}: {service.error}')
    assert service.bound is not None
    typer.echo(f"dashboard on http://127.0.0.1:{service.bound[1]}/ (Ctrl-C to stop)")
    sys.stdout.flush()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
