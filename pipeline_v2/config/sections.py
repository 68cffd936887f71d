"""The config's sections as pydantic models: the single place defaults live."""

from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from pipeline_v2.addresses import parse_address
from pipeline_v2.gates import Gate, parse_gate, parse_gates
from pipeline_v2.redact import redact_url

DEFAULT_CONFIG_NAME = "stages.json"
MIN_TOKEN_LENGTH = 16  # daemon.http_token and $PIPELINE_HTTP_TOKEN
TEMPLATE_FIELDS = ("study", "number", "trial_id", "value", "params", "user_attrs", "python")
COMMAND_FIELDS = (*TEMPLATE_FIELDS, "model_dir", "run_dir")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | float | int) -> float:
    """Seconds in `"90"`, `"30s"`, `"15m"`, `"2h"`, `"7d"`, `"1w"` or a plain number."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 15m, 2h or 7d, got {json.dumps(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"expected a duration like 30s, 15m, 2h or 7d, got {json.dumps(value)}"
            )
        seconds = float(match[1]) * _UNITS[match[2]]
    if seconds < 0:
        raise ValueError(f"expected a duration >= 0, got {json.dumps(value)}")
    return seconds


def check_template(template: str, allowed: tuple[str, ...]) -> str:
    """Raise ValueError if `template` names a field outside `allowed`."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"invalid template {json.dumps(template)}: {exc}") from None
    for name in fields:
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if root not in allowed:
            raise ValueError(
                f"unknown template field {{{name}}} in {json.dumps(template)} "
                f"(expected one of {', '.join('{' + f + '}' for f in allowed)})"
            )
    return template


class _Model(BaseModel):
    # protected_namespaces=(): `model_dir` is a config key, not pydantic's (pydantic < 2.10
    # warns about any field starting with "model_").
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, protected_namespaces=())


def _seconds(value: Any) -> Any:
    """Seconds fields take a duration string too ("90", "30s", "5m", "2h", "7d")."""
    return parse_duration(value) if isinstance(value, str) else value


_SECONDS_SCHEMA = {"anyOf": [{"type": "number"},
                             {"type": "string", "pattern": _DURATION.pattern}]}
PositiveSeconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0.0),
                            WithJsonSchema(_SECONDS_SCHEMA)]
Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0.0),
                    WithJsonSchema(_SECONDS_SCHEMA)]


STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")  # with an optional "+driver"


def _check_storage(value: str) -> str:
    """A URL of a dialect discovery reads, or a journal file path (no "://")."""
    if "://" in value and value.split(":", 1)[0].split("+", 1)[0] not in STORAGE_SCHEMES:
        raise ValueError("expected sqlite://, postgresql://, mysql:// or a journal file path, "
                         f"got {json.dumps(redact_url(value))}")
    return value


class OptunaConfig(_Model):
    """Where the Optuna trials come from."""

    storage: Annotated[str, AfterValidator(_check_storage)] = Field("sqlite:///optuna.db",
                                                                     min_length=1)
    studies: list[str] = Field(["my_study"], min_length=1)
    states: list[Literal["COMPLETE", "PRUNED", "FAIL"]] = Field(["COMPLETE"], min_length=1)
    model_dir: str = "models/trial_{number}"

    @field_validator("model_dir")
    @classmethod
    def _model_dir_fields(cls, value: str) -> str:
        return check_template(value, TEMPLATE_FIELDS)


_SCHEDULER = re.compile(r"^(tcp|tls|ucx|ws|wss)://[^\s/]+:\d+$")


def _check_executor(value: str) -> str:
    if value != "local" and not _SCHEDULER.match(value):
        raise ValueError(
            f'expected "local" or a Dask scheduler address like "tcp://host:8786", '
            f"got {json.dumps(value)}"
        )
    return value


class DaemonConfig(_Model):
    """The polling loop."""

    check_interval: PositiveSeconds = 300
    health_check_interval: PositiveSeconds = 60
    workers: int = Field(2, ge=1)
    # "local": worker processes on this host; a Dask scheduler address: callable stages there.
    executor: Annotated[str, AfterValidator(_check_executor)] = "local"
    http: str | None = "127.0.0.1:8765"
    http_token: str | None = Field(None, min_length=MIN_TOKEN_LENGTH)
    disk_warn_percent: float = Field(90, gt=0, le=100)
    log_max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    log_backups: int = Field(5, ge=1)

    @field_validator("http")
    @classmethod
    def _http_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value


class RetryConfig(_Model):
    """Delays in seconds between attempts after an error; the last one repeats."""

    delays: list[Seconds] = Field([5, 30, 300], min_length=1)


class RestartConfig(_Model):
    """Restart policy for crashed paper traders."""

    backoff: list[Seconds] = Field([1, 60], min_length=2, max_length=2)
    max_crashes: int = Field(5, ge=1)
    window_seconds: PositiveSeconds = 60


def _check_gate(expression: str) -> str:
    parse_gate("metric", expression)
    return expression


GateExpression = Annotated[str, AfterValidator(_check_gate)]


class StageConfig(_Model):
    """A validation stage: a Python callable (`run`) or an argv template (`command`)."""

    kind: Literal["stage"] = "stage"
    enabled: bool = True
    max_attempts: int = Field(3, ge=1)
    timeout_seconds: PositiveSeconds = 300
    run: str | None = None
    command: list[str] | None = Field(None, min_length=1)
    params: dict[str, Any] = {}
    gates: dict[str, GateExpression] = {}
    retry: RetryConfig | None = None

    @field_validator("run")
    @classmethod
    def _run_format(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError(f'expected "<module>:<function>", got {json.dumps(value)}')
        return value

    @field_validator("command")
    @classmethod
    def _command_fields(cls, value: list[str] | None) -> list[str] | None:
        for part in value or []:
            check_template(part, COMMAND_FIELDS)
        return value

    @property
    def parsed_gates(self) -> list[Gate]:
        """The gates, parsed."""
        return parse_gates(self.gates)


class DeployStageConfig(StageConfig):
    """The deployment stage: supervise the best trials' paper traders."""

    kind: Literal["deploy"] = "deploy"  # type: ignore[assignment]
    max_attempts: int = Field(1, ge=1)
    timeout_seconds: PositiveSeconds = 60
    auto_restart: bool = True
    max_deployments: int = Field(3, ge=1)
    rank_by: str = Field("backtest.sharpe", min_length=1)
    min_improvement: float = Field(0.05, ge=0)
    command: list[str] | None = Field(  # type: ignore[assignment]
        [
            "{python}",
            "-m",
            "pipeline_v2.paper",
            "--model-dir",
            "{model_dir}",
            "--run-dir",
            "{run_dir}",
        ],
        min_length=1,
    )
    stop_grace_seconds: PositiveSeconds = 10
    heartbeat_timeout: PositiveSeconds = 120
    log_max_mb: float = Field(50, gt=0)
    log_backups: int = Field(5, ge=0)
    restart: RestartConfig = RestartConfig()
    evaluate_after: str | float = "7d"
    # No verdict before this much paper trading (metrics.json `bars` and `trades`).
    min_bars: int = Field(100, ge=0)
    min_trades: int = Field(5, ge=0)
    gates: dict[str, GateExpression] = {
        "sharpe": ">= 0.7",
        "max_drawdown": "<= 0.35",
        "total_return": ">= 0",
    }

    @field_validator("evaluate_after")
    @classmethod
    def _duration(cls, value: str | float) -> str | float:
        parse_duration(value)
        return value

    @property
    def evaluate_after_seconds(self) -> float:
        """`evaluate_after` in seconds."""
        return parse_duration(self.evaluate_after)


def default_stages() -> dict[str, StageConfig]:
    """The shipped stages: backtest, cge_stress (off) and deploy."""
    return {
        "backtest": StageConfig(
            max_attempts=3,
            timeout_seconds=60,
            run="pipeline_v2.stages.builtin:backtest",
            gates={"sharpe": ">= 1.0", "max_drawdown": "<= 0.25", "win_rate": ">= 0.45"},
        ),
        "cge_stress": StageConfig(
            enabled=False,
            max_attempts=2,
            timeout_seconds=300,
            run="pipeline_v2.stages.builtin:stress",
            params={"scenarios": 200},
            gates={
                "profitable_fraction": ">= 0.40",
                "median_sharpe": ">= 0.0",
                "worst_drawdown": "<= 0.25",
                "catastrophic": "== 0",
            },
        ),
        "deploy": DeployStageConfig(),
    }


class NotifyConfig(_Model):
    """Where events listed in `events` are delivered."""

    webhook: str | None = None
    command: list[str] | None = Field(None, min_length=1)
    events: list[str] = ["trial.deployed", "trial.failed", "deployment.crash_loop"]


class Config(_Model):
    """The whole validated configuration. Paths are resolved against `base_dir`."""

    optuna: OptunaConfig = OptunaConfig()
    state_db: str = Field("pipeline_v2.db", min_length=1)
    logs_dir: str = Field("logs", min_length=1)
    daemon: DaemonConfig = DaemonConfig()
    retry: RetryConfig = RetryConfig()
    stages: dict[str, StageConfig | DeployStageConfig] = Field(default_factory=default_stages)
    notify: NotifyConfig = NotifyConfig()
    base_dir: str = Field(".", exclude=True, description="internal: the config file's folder")
    source: str = Field(DEFAULT_CONFIG_NAME, exclude=True, description="internal: the file")

    def path(self, value: str) -> Path:
        """Resolve a path from the config against the config file's folder."""
        return (Path(self.base_dir) / os.path.expanduser(value)).resolve()

    @property
    def state_db_path(self) -> Path:
        """The state DB file."""
        return self.path(self.state_db)

    @property
    def logs_path(self) -> Path:
        """The logs folder."""
        return self.path(self.logs_dir)

    @property
    def storage_url(self) -> str:
        """The Optuna storage with a relative SQLite or journal path made absolute."""
        url = self.optuna.storage
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            return "sqlite:///" + str(self.path(url.removeprefix("sqlite:///")))
        if "://" not in url:
            return str(self.path(url))
        return url

    @property
    def deploy_stage(self) -> tuple[str, DeployStageConfig] | None:
        """The (first) deployment stage, if any."""
        for name, stage in self.stages.items():
            if isinstance(stage, DeployStageConfig):
                return name, stage
        return None

    def retry_delays(self, stage: str) -> list[float]:
        """The delays that apply to `stage`: its own override, else the global ones."""
        override = self.stages[stage].retry
        return list((override or self.retry).delays)

    def to_json(self) -> dict[str, Any]:
        """The config as it would be written to stages.json: no internal or empty keys."""
        data = self.model_dump(mode="json", exclude={"base_dir", "source", "stages"})
        data["stages"] = {}
        for name, stage in self.stages.items():
            body = stage.model_dump(mode="json", exclude_none=True)
            if body["kind"] == ("deploy" if name == "deploy" else "stage"):
                del body["kind"]
            data["stages"][name] = body
        data["notify"] = data.pop("notify")
        return _whole_numbers(data)


def _whole_numbers(value: Any) -> Any:
    """Write 300.0 as 300, as a person would."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value
