"""Click's usage errors (bad option value, unknown option, missing argument...) said the way the
CLI says its own: one line on stderr naming the option, quoting the bad value and saying what was
expected; exit 2. Click would print three (Usage, Try, Error)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

# Typer >= 0.29 vendors click as `typer._click`; these are the errors its parser raises.
from typer._click.exceptions import (
    BadOptionUsage,
    BadParameter,
    MissingParameter,
    NoArgsIsHelpError,
    NoSuchOption,
    UsageError,
)


class OneLineUsageError(UsageError):
    """A usage error already phrased; shown as `error: <line>` (exit 2)."""

    def show(self, file: Any = None) -> None:
        typer.echo(f"error: {self.message}", err=True)


@contextmanager
def one_line_usage_errors(ctx: Any = None) -> Iterator[None]:
    """Re-raise click's usage errors as one line (the no-arguments help passes through).
    `ctx`: the command's context, for errors its parser raised without one."""
    try:
        yield
    except (OneLineUsageError, NoArgsIsHelpError):
        raise
    except UsageError as exc:
        exc.ctx = exc.ctx or ctx
        raise OneLineUsageError(usage_line(exc), exc.ctx) from None


def usage_line(exc: UsageError) -> str:
    """The one line for a click usage error."""
    ctx = exc.ctx
    where = ctx.command_path if ctx is not None else "pipeline"
    if isinstance(exc, MissingParameter) and exc.param is not None:
        return f"{where}: missing {_name(exc.param, ctx)}{_help_hint(exc.param)}"
    if isinstance(exc, BadParameter) and exc.param is not None:
        return _bad_value(exc, ctx)
    if isinstance(exc, NoSuchOption):
        hint = (f"did you mean {' or '.join(sorted(exc.possibilities))}?" if exc.possibilities
                else f"expected one of {', '.join(_options(ctx))}")
        return f'{exc.option_name}: not an option of "{where}" ({hint})'
    if isinstance(exc, BadOptionUsage):
        param = _param_of(ctx, exc.option_name)
        if "requires" in exc.message:
            expected = _expected(param) if param is not None else "a value"
            return f"{exc.option_name}: missing value (expected {expected})"
        if "does not take a value" in exc.message:
            return f'{exc.option_name}: a flag, it takes no value (drop the "=...")'
    extra = re.fullmatch(r"Got unexpected extra argument\(s\) \((.*)\)", exc.message)
    if extra:
        names = " ".join(_name(p, ctx) for p in _arguments(ctx))
        takes = f"it takes {names}" if names else "it takes no arguments"
        return f'{where}: unexpected argument "{extra[1]}" ({takes})'
    if exc.message == "Missing command.":
        return f"{where}: missing command (expected one of {', '.join(_commands(ctx))})"
    return f"{where}: {_sentence(exc.message)}"


def unknown_command(ctx: Any, name: str) -> OneLineUsageError:
    """`pipeline frob`: say so, with the closest commands or every one."""
    import difflib

    known = _commands(ctx)
    close = difflib.get_close_matches(name, known)
    hint = (f"did you mean {' or '.join(close)}?" if close
            else f"expected one of {', '.join(known)}")
    return OneLineUsageError(f'{name}: not a command of "{ctx.command_path}" ({hint})', ctx)


def _bad_value(exc: BadParameter, ctx: Any) -> str:
    """A value that does not parse or is out of range: `--limit: expected an integer >= 1,
    got "abc"`."""
    param = exc.param
    name = _name(param, ctx)
    errors = getattr(exc.__cause__, "errors", None)  # typer validates values with pydantic
    if callable(errors) and errors() and "input" in errors()[0]:
        return f'{name}: expected {_expected(param)}, got "{errors()[0]["input"]}"'
    path = re.fullmatch(r"\w+ '(.*)' is (.*)\.", exc.message)
    if path:
        return f'{name}: "{path[1]}" is {path[2]} (expected {_expected(param)})'
    return f"{name}: {_sentence(exc.message)}"


def _expected(param: Any) -> str:
    """What a parameter takes, in words: `an integer >= 1`, `a number from 0 to 1`, `a file`."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return "a value"
    info, kind = descriptor.parameter_info, descriptor.annotation
    if kind is bool:  # a flag's value only comes from its environment variable
        return "true or false (1/0, yes/no, on/off)"
    if kind in (int, float):
        noun = "an integer" if kind is int else "a number"
        low, high = info.min, info.max
        if low is not None and high is not None:
            return f"{noun} from {low:g} to {high:g}"
        if low is not None:
            return f"{noun} >= {low:g}"
        if high is not None:
            return f"{noun} <= {high:g}"
        return noun
    if descriptor.is_path:
        return "a file" if not info.dir_okay else "a folder" if not info.file_okay else "a path"
    return "a value"


def _name(param: Any, ctx: Any) -> str:
    """`--limit` (or `$PIPELINE_CONFIG` when the value came from there); an argument's NAME."""
    if param.param_type_name == "argument":
        return (param.name or "").upper()
    source = ctx.get_parameter_source(param.name) if ctx is not None and param.name else None
    if source is not None and source.name == "ENVIRONMENT" and isinstance(param.envvar, str):
        return f"${param.envvar}"
    return max(param.opts, key=len)


def _help_hint(param: Any) -> str:
    """An argument's help as a hint: ` (trial number, or study:number)`."""
    text = (getattr(param, "help", None) or "").strip().rstrip(".")
    return f" ({text[:1].lower() + text[1:]})" if text else ""


def _sentence(message: str) -> str:
    """Click's sentence as a clause: lower-case start, no full stop."""
    message = message.strip().rstrip(".")
    return message[:1].lower() + message[1:]


def _options(ctx: Any) -> list[str]:
    return [max(p.opts, key=len) for p in ctx.command.get_params(ctx)
            if p.param_type_name == "option" and not getattr(p, "hidden", False)]


def _arguments(ctx: Any) -> list[Any]:
    return [p for p in ctx.command.get_params(ctx) if p.param_type_name == "argument"]


def _param_of(ctx: Any, option: str) -> Any:
    return next((p for p in ctx.command.get_params(ctx) if option in p.opts), None)


def _commands(ctx: Any) -> list[str]:
    group = ctx.command
    return [name for name in group.list_commands(ctx) if not group.commands[name].hidden]
