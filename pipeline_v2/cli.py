"""The `pipeline` command: parse, call one function, render. Only this module prints or exits."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from pipeline_v2 import control, render
from pipeline_v2.config import Config, load_config
from pipeline_v2.errors import ConfigError, PipelineError, UsageError
from pipeline_v2.status import snapshot

EXIT_CODES: dict[type[PipelineError], int] = {ConfigError: 2, UsageError: 2}

app = typer.Typer(
    help="Carry completed Optuna trials through backtest, stress and paper trading.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(
    help="Check, show or print the JSON Schema of the config.", no_args_is_help=True
)
app.add_typer(config_app, name="config")

# Piped output (CI logs, `| less`) gets room for the wide tables instead of 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 130)

ConfigPath = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="PIPELINE_CONFIG",
        show_default="./stages.json",
        help="Config file (JSON or YAML).",
        dir_okay=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TrialRef = Annotated[str, typer.Argument(help="Trial number, or study:number.", show_default=False)]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def handles_errors(fn: F) -> F:
    """Turn the library's typed errors into one stderr line and the right exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            code = next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1)
            raise fail(str(exc), code) from None

    return wrapper  # type: ignore[return-value]


def command(target: typer.Typer = app, name: str | None = None) -> Callable[[F], F]:
    """Register a CLI command with error handling."""

    def deco(fn: F) -> F:
        target.command(name)(handles_errors(fn))
        return fn

    return deco


def emit(data: Any, as_json: bool, view: Callable[[Any], Any] | None = None) -> None:
    """Print JSON or the rich view."""
    if as_json or view is None:
        typer.echo(render.to_json(data))
    else:
        out.print(view(data))


def open_workspace(config_path: Path | None) -> tuple[Config, control.Store]:
    """Load the config and open its state DB."""
    config = load_config(config_path)
    return config, control.open_store(config)


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
    config: ConfigPath = None,
    json_: JsonFlag = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every 2 s until Ctrl-C.")] = False,
) -> None:
    """Pipeline health, trial and stage counts, and deployments."""
    cfg, store = open_workspace(config)
    if not watch:
        emit(snapshot(store, cfg, time.time()), json_, render.status_view)
        return
    from rich.live import Live

    try:
        with Live(render.status_view(snapshot(store, cfg, time.time())), console=out) as live:
            while True:
                time.sleep(2)
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
) -> None:
    """List trials, optionally of one status."""
    from pipeline_v2.models import TrialStatus

    if status_ is not None and status_ not in {s.value for s in TrialStatus}:
        raise UsageError(
            f'--status: unknown status "{status_}" (expected one of '
            f"{', '.join(s.value for s in TrialStatus)})"
        )
    _, store = open_workspace(config)
    emit(store.list_trials(status_), json_, render.trials_table)


@command()
def show(trial: TrialRef, config: ConfigPath = None, json_: JsonFlag = False) -> None:
    """One trial: its stages, results and audit trail."""
    _, store = open_workspace(config)
    data = control.show_trial(store, trial)
    emit(data, json_, lambda d: render.trial_view(d["trial"], d["stages"], d["events"]))


@command()
def discover(config: ConfigPath = None, json_: JsonFlag = False) -> None:
    """Run one discovery pass now: record newly completed Optuna trials."""
    from pipeline_v2.discovery import Discovery

    cfg, store = open_workspace(config)
    result = Discovery(cfg, store).poll()
    if json_:
        typer.echo(render.to_json(result))
    else:
        for study, n in result.new.items():
            typer.echo(f"{study}: {n} new trial(s)")
        for name in result.missing:
            typer.echo(f"{name}: not in the storage (yet)")
        typer.echo(f"{result.total} new in {result.seconds * 1000:.1f} ms")
    if result.errors:
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
    logs.configure(cfg.logs_path)
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


AllFlag = Annotated[bool, typer.Option("--all", help="Every trial (and the pipeline itself).")]
OptionalTrial = Annotated[
    str | None, typer.Argument(help="Trial number, or study:number.", show_default=False)
]


def _one_or_all(trial: str | None, all_: bool) -> str | None:
    if (trial is None) == (not all_):
        raise UsageError("name a TRIAL or pass --all (not both)")
    return trial


@command()
def pause(trial: OptionalTrial = None, all_: AllFlag = False, config: ConfigPath = None) -> None:
    """Pause a trial (or --all): nothing new starts for it."""
    _, store = open_workspace(config)
    done = control.pause(store, _one_or_all(trial, all_))
    typer.echo(f"paused: {', '.join(done)}")


@command()
def resume(trial: OptionalTrial = None, all_: AllFlag = False, config: ConfigPath = None) -> None:
    """Resume a paused trial (or --all)."""
    _, store = open_workspace(config)
    done = control.resume(store, _one_or_all(trial, all_))
    typer.echo(f"resumed: {', '.join(done)}")


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
def stop(trial: OptionalTrial = None, all_: AllFlag = False, config: ConfigPath = None) -> None:
    """Stop a deployed trader (or --all); its trial is retired."""
    cfg, store = open_workspace(config)
    stopped = control.stop(store, cfg, _one_or_all(trial, all_))
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@command()
def demo(
    dir_: Annotated[Path, typer.Option("--dir", help="Workspace folder (rebuilt each run).")]
    = Path("demo"),
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials to run.")] = 28,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Your OHLCV CSV instead of the synthetic market.")] = None,
    no_run: Annotated[bool, typer.Option("--no-run", help="Build the workspace only.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Give up after S seconds.")]
    = 600,
) -> None:
    """Build a demo workspace (data, a real Optuna study, stages.json) and run it end to end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline_v2 import demo as demo_mod

    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=out, transient=False) as progress:
        task = progress.add_task("optuna study", total=trials, note="")
        workspace = demo_mod.build(
            dir_, trials, data,
            on_trial=lambda n, v: progress.update(task, advance=1, note=f"sharpe {v:.2f}"),
        )
    typer.echo(f"built {workspace.root}: data/market.csv (out of sample from "
               f"{workspace.split}), optuna.db ({trials} trials), models/, stages.json")
    if no_run:
        typer.echo(f"run it: cd {workspace.root} && pipeline run-daemon --until-idle")
        return
    code = demo_mod.run(workspace, timeout, progress_view(columns))
    cfg, store = open_workspace(workspace.config)
    out.print(render.status_view(snapshot(store, cfg, time.time())))
    from pipeline_v2.report import pipeline_report

    out.print(render.report_view(pipeline_report(store, cfg)))
    if code != 0:
        raise fail(f"the daemon exited {code}; see {workspace.root / 'logs' / 'daemon.out'}")
    typer.echo(f"done: explore with  pipeline status --config {workspace.config}")


def progress_view(columns: tuple[Any, ...]) -> Any:
    """A rich Progress for the demo's daemon run (stages, then paper trading)."""
    from rich.progress import Progress

    return Progress(*columns, console=out)


@command()
def report(config: ConfigPath = None, json_: JsonFlag = False) -> None:
    """Every trial's verdict with its backtest, stress and paper numbers, best first."""
    from pipeline_v2.report import pipeline_report

    cfg, store = open_workspace(config)
    emit(pipeline_report(store, cfg), json_, render.report_view)


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f'--param: expected key=value, got "{pair}"')
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


@command()
def backtest(
    trial: Annotated[str | None, typer.Argument(
        help="A discovered trial (number or study:number); omit for an ad hoc run.",
        show_default=False)] = None,
    config: ConfigPath = None,
    data: Annotated[Path | None, typer.Option("--data", help="OHLCV CSV (or Parquet).")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="sma_cross, mean_reversion.")]
    = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Strategy param k=v.")] = None,
    commission: Annotated[float | None, typer.Option(
        "--commission", min=0, help="Fraction of notional per fill [default: 0.0005].")] = None,
    slippage: Annotated[float | None, typer.Option(
        "--slippage", min=0, help="Fraction of price against each fill [default: 0.0005].")] = None,
    start: Annotated[str | None, typer.Option("--start", help="First date (inclusive).")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last date (exclusive).")] = None,
    json_: JsonFlag = False,
) -> None:
    """Backtest a trial's model, or a strategy on a CSV, and print the metrics."""
    if trial is None:
        if data is None or strategy is None:
            raise UsageError("give a TRIAL, or --data CSV and --strategy NAME for an ad hoc run")
        metrics = control.backtest_adhoc(data, strategy, _parse_params(param or []), commission,
                                         slippage, start, end)
    else:
        if data is not None or strategy is not None or param:
            raise UsageError("--data/--strategy/--param are for ad hoc runs; a TRIAL brings its "
                             "own model (use --start/--end/--commission/--slippage to vary it)")
        cfg, store = open_workspace(config)
        overrides = {"commission": commission, "slippage": slippage, "start": start, "end": end}
        metrics = control.backtest_trial(cfg, store, trial, overrides)
    emit(metrics, json_, render.metrics_table)


# ---------------------------------------------------------------------------------------------
# Config


@command(config_app, "check")
def config_check(config: ConfigPath = None) -> None:
    """Validate the config and import every stage callable."""
    cfg = control.check_config(config)
    typer.echo(f"{cfg.source}: ok ({len(cfg.stages)} stages: {', '.join(cfg.stages)})")


@command(config_app, "show")
def config_show(config: ConfigPath = None) -> None:
    """Print the config with every default filled in."""
    typer.echo(json.dumps(load_config(config).to_json(), indent=2))


@command(config_app, "schema")
def config_schema() -> None:
    """Print the JSON Schema of stages.json."""
    from pipeline_v2.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="pipeline")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
