"""Load and validate stages.json (or the same schema in YAML) into a frozen Config.

Every validation error becomes a `ConfigError` whose one line names the file and the key path
and quotes the bad value.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline_v2.addresses import TOKEN_ENV, is_loopback, parse_address
from pipeline_v2.config.checks import check_references
from pipeline_v2.config.errors import describe, quote, unknown_key
from pipeline_v2.config.sections import (
    DEFAULT_CONFIG_NAME,
    MIN_TOKEN_LENGTH,
    Config,
    DeployStageConfig,
    StageConfig,
    default_stages,
)
from pipeline_v2.errors import ConfigError


def default_config_path() -> Path:
    """`$PIPELINE_CONFIG`, else ./stages.json."""
    return Path(os.environ.get("PIPELINE_CONFIG") or DEFAULT_CONFIG_NAME)


def read_document(path: Path) -> Any:
    """Parse a JSON or YAML file; a syntax error names the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f'{path}: config file not found (create one with "pipeline init" or pass --config PATH)'
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # only YAML configs pay for it

        try:
            return yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ConfigError(f"{path}: {where}invalid YAML: {exc.problem}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None


def load_config(path: Path | str | None = None) -> Config:
    """Load, validate and resolve the config at `path` (default: `default_config_path()`)."""
    path = Path(path) if path is not None else default_config_path()
    raw = read_document(path)
    return parse_config(raw, source=str(path), base_dir=str(path.resolve().parent))


def parse_config(raw: Any, source: str = DEFAULT_CONFIG_NAME, base_dir: str = ".") -> Config:
    """Validate an already parsed document."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level, got {quote(raw)}")
    raw = dict(raw)
    stages = raw.pop("stages", None)
    if "base_dir" in raw or "source" in raw:
        key = "base_dir" if "base_dir" in raw else "source"
        raise ConfigError(f"{source}: {key}: {unknown_key(key, Config)}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc, Config)}") from None
    env_token = os.environ.get(TOKEN_ENV)
    if env_token and len(env_token) < MIN_TOKEN_LENGTH:  # as daemon.http_token (not quoted)
        raise ConfigError(f"${TOKEN_ENV}: expected at least {MIN_TOKEN_LENGTH} characters, "
                          f"got {len(env_token)}")
    if (config.daemon.http and not is_loopback(parse_address(config.daemon.http)[0])
            and not (config.daemon.http_token or os.environ.get(TOKEN_ENV))):
        raise ConfigError(
            f"{source}: daemon.http_token: required when daemon.http binds a non-loopback "
            f'address ("{config.daemon.http}"); set a token of 16+ characters (or ${TOKEN_ENV}), '
            'or bind 127.0.0.1')
    built = _parse_stages(stages, source) if stages is not None else default_stages()
    return config.model_copy(update={"stages": built, "base_dir": base_dir, "source": source})


def _parse_stages(stages: Any, source: str) -> dict[str, StageConfig]:
    if not isinstance(stages, dict):
        raise ConfigError(f"{source}: stages: expected an object of stages, got {quote(stages)}")
    if not stages:
        raise ConfigError(f"{source}: stages: expected at least one stage, got {{}}")
    built: dict[str, StageConfig] = {}
    for name, body in stages.items():
        where = f"stages.{name}"
        if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
            raise ConfigError(
                f'{source}: {where}: expected a stage name of letters, digits, "_" or "-", '
                f"got {json.dumps(name)}"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {where}: expected an object, got {quote(body)}")
        is_deploy = body.get("kind") == "deploy" or (name == "deploy" and "kind" not in body)
        model = DeployStageConfig if is_deploy else StageConfig
        try:
            stage = model.model_validate(body)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {where}.{describe(exc, model)}") from None
        if isinstance(stage, DeployStageConfig):
            if stage.run is not None:
                raise ConfigError(
                    f"{source}: {where}.run: a deploy stage starts a trader with "
                    f'"command"; got "run": {json.dumps(stage.run)}'
                )
        elif (stage.run is None) == (stage.command is None):
            given = "both" if stage.run is not None else "neither"
            raise ConfigError(
                f'{source}: {where}: expected exactly one of "run" or "command", got {given}'
            )
        built[name] = stage
    check_references(built, source)
    return built


def json_schema() -> dict[str, Any]:
    """The JSON Schema of stages.json (internal fields left out)."""
    schema = Config.model_json_schema()
    for internal in ("base_dir", "source"):
        schema["properties"].pop(internal, None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pipeline_v2 stages.json"
    return schema
