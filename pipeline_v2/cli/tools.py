"""`pipeline` tools: the demo, the report, ad hoc backtests and the config commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline_v2.cli.common import (
    ConfigPath,
    JsonFlag,
    command,
    config_app,
    console,
    control,
    emit,
    fail,
    load_config,
    open_workspace,
    render,
    render_reports,
)
from pipeline_v2.errors import UsageError


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
    with Progress(*columns, console=console(), transient=False) as progress:
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
    from pipeline_v2.status import snapshot

    cfg, store = open_workspace(workspace.config)
    out = console()
    out.print(render.status_view(snapshot(store, cfg, time.time())))
    full, page = control.build_report(store, cfg, None)
    out.print(render_reports.pipeline_report_view(full))
    control.write_text(workspace.root / "report.html", page(full), "report.html")
    written = [workspace.root / "report.html"]
    if full["trials"]:  # the best-ranked trial in detail: should we trust it?
        best, trial_page = control.build_report(store, cfg, full["trials"][0]["trial"])
        out.print(render_reports.trial_report_view(best))
        target = workspace.root / f"report_trial_{best['number']}.html"
        control.write_text(target, trial_page(best), target.name)
        written.append(target)
    typer.echo("HTML reports: " + ", ".join(str(p) for p in written))
    if code != 0:
        raise fail(f"the daemon exited {code}; see {workspace.root / 'logs' / 'daemon.out'}")
    typer.echo(f"done: explore with  pipeline status --config {workspace.config}")


def progress_view(columns: tuple[Any, ...]) -> Any:
    """A rich Progress for the demo's daemon run (stages, then paper trading)."""
    from rich.progress import Progress

    return Progress(*columns, console=console())


@command()
def report(
    trial: Annotated[str | None, typer.Argument(
        help="Trial number, or study:number; omit it for the whole pipeline.",
        show_default=False)] = None,
    config: ConfigPath = None, json_: JsonFlag = False,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write a self-contained HTML report (inline SVG charts) here.",
        dir_okay=False)] = None,
) -> None:
    """One trial across its stages (verdict and why), or the whole pipeline (ranked trials,
    funnel, timings, PBO)."""
    cfg, store = open_workspace(config, reading=True)
    data, page = control.build_report(store, cfg, trial)
    if html is not None:
        control.write_text(html, page(data), "--html")
        typer.echo(f"wrote {html}", err=json_)  # --json keeps stdout pure JSON
    emit(data, json_, lambda d: render_reports.trial_report_view(d) if trial
         else render_reports.pipeline_report_view(d))


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
    strategy: Annotated[str | None, typer.Option(
        "--strategy", help="sma_cross, mean_reversion, or a plug-in package.module:name.")]
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
    _check_date("--start", start)
    _check_date("--end", end)
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


def _check_date(option: str, value: str | None) -> None:
    """A bad --start/--end is named as the option (the engine would call it start/end)."""
    if value is None:
        return
    import numpy as np

    try:
        np.datetime64(value, "s")
    except ValueError:
        raise UsageError(f'{option}: expected a date like "2021-06-30", got "{value}"') from None


# ---------------------------------------------------------------------------------------------
# Config


@command(config_app, "check")
def config_check(config: ConfigPath = None) -> None:
    """Validate the config and import every stage callable."""
    cfg = control.check_config(config)
    typer.echo(f"{cfg.source}: ok ({len(cfg.stages)} stages, run in file order: "
               f"{' -> '.join(cfg.stages)})")


@command(config_app, "show")
def config_show(config: ConfigPath = None) -> None:
    """Print the config with every default filled in (secrets masked)."""
    from pipeline_v2.redact import redact

    typer.echo(json.dumps(redact(load_config(config).to_json()), indent=2))


@command(config_app, "schema")
def config_schema() -> None:
    """Print the JSON Schema of stages.json."""
    from pipeline_v2.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
