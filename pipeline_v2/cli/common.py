"""The CLI's shared parts: the Typer app, option types, error mapping and output."""

from __future__ import annotations

import functools
import importlib.util
import json
import sqlite3
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from pipeline_v2 import render_json
from pipeline_v2.cli.group import PipelineCommand, PipelineGroup
from pipeline_v2.errors import ConfigError, NotFoundError, PipelineError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline_v2 import control, render, render_ops, render_reports
    from pipeline_v2.config import Config
    from pipeline_v2.store import Store


def lazy(name: str) -> ModuleType:
    """A module loaded on first attribute access: each command imports only what it uses, so
    `--help` and `status` never pay for pandas, numpy, optuna or the backtest engine."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, name
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if not TYPE_CHECKING:
    control = lazy("pipeline_v2.control")
    render = lazy("pipeline_v2.render")
    render_ops = lazy("pipeline_v2.render_ops")
    render_reports = lazy("pipeline_v2.render_reports")

ENGINE_ERRORS = "pipeline_v2.backtest.errors"
# The engine's errors are bad input to a command (data, strategy, params): a usage error.
EXIT_CODES: dict[type[Exception], int] = {ConfigError: 2, UsageError: 2, NotFoundError: 2}


def _engine_error() -> type[Exception] | None:
    """The engine's error class if the engine was imported (else it cannot have raised)."""
    module = sys.modules.get(ENGINE_ERRORS)
    return getattr(module, "EngineError", None) if module is not None else None

app = typer.Typer(
    cls=PipelineGroup,
    help="Carry completed Optuna trials through backtest, stress and paper trading.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(
    cls=PipelineGroup, help="Check, show or print the JSON Schema of the config.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
_debug = {"on": False}


def debug_enabled() -> bool:
    """True when `pipeline --debug` (or PIPELINE_DEBUG) asked for tracebacks on stderr."""
    return _debug["on"]


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="PIPELINE_DEBUG",
        help="Print the traceback of an unexpected error on stderr.")] = False,
) -> None:
    """Carry completed Optuna trials through backtest, stress and paper trading."""
    _debug["on"] = debug


@functools.cache
def console() -> Console:
    """The rich console for tables and views (rich is imported by the commands that draw)."""
    from rich.console import Console

    # Piped output (CI logs, `| less`) gets room for the wide tables instead of 80 columns.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 130)

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
    """Turn the library's typed errors into one stderr line and the right exit code; anything
    else is one line too, its traceback in the log (or on stderr with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            code = next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1)
            raise fail(str(exc), code) from None
        except sqlite3.DatabaseError as exc:
            if "malformed" not in str(exc) and "not a database" not in str(exc):
                raise fail(_unexpected(exc, kwargs.get("config")), 1) from None
            raise fail(_corrupt(kwargs.get("config"), exc), 1) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `pipeline trials --json | head`: click exits 1, quietly
            raise
        except Exception as exc:
            engine = _engine_error()
            if engine is not None and isinstance(exc, engine):
                raise fail(str(exc), 2) from None
            if getattr(exc, "exit_code", None) is not None:  # click's own exits and usage errors
                raise
            raise fail(_unexpected(exc, kwargs.get("config")), 1) from None

    return wrapper  # type: ignore[return-value]


def _corrupt(config_path: Path | None, exc: sqlite3.DatabaseError) -> str:
    """A corrupt page met while reading (read-only commands check the DB lightly up front)."""
    try:
        from pipeline_v2.store import corrupt_message

        return corrupt_message(load_config(config_path))
    except Exception:  # noqa: BLE001 - naming the file is best effort
        return f"the state DB is corrupt ({exc})"


def _unexpected(exc: BaseException, config_path: Path | None) -> str:
    """The last-resort line; the traceback goes to stderr (--debug) or the pipeline log."""
    head = f"unexpected {type(exc).__name__}: {exc}".rstrip(": ")
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
        return head
    where = _log_traceback(exc, config_path)
    return f"{head} (see {where} or rerun with --debug)" if where else (
        f"{head} (rerun with --debug)")


def _log_traceback(exc: BaseException, config_path: Path | None) -> str | None:
    """Write the traceback to the pipeline log; returns its path, or None if that failed."""
    from pipeline_v2 import logs

    try:
        logs_dir = load_config(config_path).logs_path
        if logs.configured_dir() != logs_dir:
            logs.configure(logs_dir, console=False)
        logs.get_logger("cli").error("unexpected_error", exc_info=exc)
        return str(logs_dir / logs.LOG_FILE)
    except Exception:  # noqa: BLE001 - the one line still goes out
        return None


def command(target: typer.Typer = app, name: str | None = None) -> Callable[[F], F]:
    """Register a CLI command with error handling."""

    def deco(fn: F) -> F:
        target.command(name, cls=PipelineCommand)(handles_errors(fn))
        return fn

    return deco


def given(ctx: typer.Context, name: str) -> bool:
    """True when parameter `name` came from the command line or the environment, not its
    default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def emit(data: Any, as_json: bool, view: Callable[[Any], Any] | None = None) -> None:
    """Print JSON or the rich view (pass `lambda d: render.x(d)`: naming `render.x` here would
    import rich for `--json` too)."""
    if as_json or view is None:
        typer.echo(render_json.to_json(data))
    else:
        console().print(view(data))


def log_to_file(config: Config, console: bool = False) -> None:
    """Send what library code logs (discovery, the HTTP server) to logs/pipeline.jsonl at INFO,
    as the daemon does (`console`: also to stderr on a terminal), never onto stdout, where
    structlog prints everything, debug included, until it is configured."""
    from pipeline_v2 import logs

    logs.configure(config.logs_path, console=None if console else False)


def load_config(config_path: Path | None) -> Config:
    """The workspace's config (pydantic is imported here, not at CLI start)."""
    from pipeline_v2.config import load_config as load

    return load(config_path)


def open_workspace(config_path: Path | None, *, reading: bool = False, existing: bool = False
                   ) -> tuple[Config, Store]:
    """Load the config and open its state DB (`reading`: a cheap check, no quick_check).

    Neither `reading` commands nor `existing` ones (`health`) create the state DB's folder: a
    folder that does not exist is a mistyped `state_db`. In an existing folder a reader may
    come before the daemon (status while it starts) and sees an empty pipeline."""
    from pipeline_v2.store import open_store

    config = load_config(config_path)
    db = config.state_db_path
    if (reading or existing) and not db.parent.is_dir():
        raise ConfigError(f"state_db: no state DB at {json.dumps(str(config.state_db_path))} "
                          "(run `pipeline init` or start the daemon)")
    store = open_store(config, check="light" if reading else "quick")
    store.wakes_daemon = True  # a change made here takes effect in the daemon at once
    return config, store
