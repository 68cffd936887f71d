"""The `pipeline` group as click runs it: each command is built from its Typer definition on
first use, so start-up pays for the one command run (`--help` for none), and click's usage
errors come out as the CLI's one line."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import (
    get_command,
    get_command_from_info,
    get_command_name,
    get_group_from_info,
    solve_typer_info_defaults,
)
from typer.models import CommandInfo, TyperInfo

from pipeline_v2.cli.usage import one_line_usage_errors, unknown_command


class Deferred(TyperCommand):
    """A command's name and help, standing in for it until it is run or its own help is asked
    for: the listing in `pipeline --help` needs no more, and building a command (its signature,
    types and options) is most of what start-up would cost."""

    def __init__(self, name: str, build: Callable[[], Any], *, help: str | None,
                 short_help: str | None, hidden: bool, deprecated: bool) -> None:
        super().__init__(name, help=help, short_help=short_help, hidden=hidden,
                         deprecated=deprecated, rich_markup_mode=None)
        self.build = build


def help_off_by_default(option: Any) -> Any:
    """`--help` left out is False, not None: Typer validates a None flag with a pydantic
    TypeAdapter, and `pipeline X --help` would import pydantic for the root's unused one."""
    if option is not None:
        option.default = False
    return option


class PipelineCommand(TyperCommand):
    """A Typer command whose usage errors are one line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with one_line_usage_errors(ctx):
            return super().parse_args(ctx, args)

    def get_help_option(self, ctx: Any) -> Any:
        return help_off_by_default(super().get_help_option(ctx))


class PipelineGroup(TyperGroup):
    """A Typer group whose commands may be `Deferred`, and whose usage errors are one line."""

    _listing = False

    def get_help_option(self, ctx: Any) -> Any:
        return help_off_by_default(super().get_help_option(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = self.commands.get(cmd_name)
        if isinstance(command, Deferred) and not self._listing:
            command = self.commands[cmd_name] = command.build()
        return command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        self._listing = True  # Typer's own listing, from the stand-ins
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise unknown_command(ctx, name)
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with one_line_usage_errors(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage_errors(ctx):  # "Missing command."
            return super().invoke(ctx)


def lazy_command(app: typer.Typer) -> PipelineGroup:
    """`app` as a click group (what `typer.main.get_command(app)` gives) whose commands and
    sub-groups are built on first use."""
    bare = copy.copy(app)  # the callback, its options and settings; no commands yet
    bare.registered_commands, bare.registered_groups = [], []
    group = get_command(bare)
    assert isinstance(group, PipelineGroup), "the app must be Typer(cls=PipelineGroup)"
    for info in app.registered_commands:
        stand_in = _deferred_command(app, info)
        group.commands[stand_in.name] = stand_in
    for group_info in app.registered_groups:
        stand_in = _deferred_group(app, group_info)
        group.commands[stand_in.name] = stand_in
    return group


def _deferred_command(app: typer.Typer, info: CommandInfo) -> Deferred:
    assert info.callback is not None
    name = info.name or get_command_name(info.callback.__name__)
    help_ = inspect.cleandoc(info.help) if info.help is not None else inspect.getdoc(
        info.callback)
    return Deferred(name, lambda: get_command_from_info(
        info, pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode),
        help=help_, short_help=info.short_help, hidden=info.hidden,
        deprecated=info.deprecated)


def _deferred_group(app: typer.Typer, info: TyperInfo) -> Deferred:
    solved = solve_typer_info_defaults(info)
    assert solved.name, "sub-apps are added with a name"
    return Deferred(solved.name, lambda: get_group_from_info(
        info, pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode, suggest_commands=app.suggest_commands),
        help=solved.help, short_help=solved.short_help, hidden=solved.hidden,
        deprecated=solved.deprecated)
