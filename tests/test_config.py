"""Config loading: defaults, path resolution, and one exact line for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_v2.config import Config, load_config, parse_duration
from pipeline_v2.errors import ConfigError


def test_defaults_are_the_seed_values() -> None:
    config = Config()
    backtest, stress, deploy = (config.stages[n] for n in ("backtest", "cge_stress", "deploy"))
    assert (backtest.enabled, backtest.max_attempts, backtest.timeout_seconds) == (True, 3, 60)
    assert (stress.enabled, stress.max_attempts, stress.timeout_seconds) == (False, 2, 300)
    assert (deploy.enabled, deploy.max_attempts, deploy.auto_restart) == (True, 1, True)
    assert config.daemon.check_interval == 300
    assert config.daemon.health_check_interval == 60
    assert config.retry.delays == [5, 30, 300]
    assert deploy.evaluate_after_seconds == 7 * 86400


def test_written_default_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "stages.json"
    path.write_text(json.dumps(Config().to_json()))
    assert load_config(path).to_json() == Config().to_json()


def test_yaml_with_the_same_schema(tmp_path: Path) -> None:
    path = tmp_path / "stages.yaml"
    path.write_text("daemon:\n  workers: 4\nretry:\n  delays: [1, 2]\n")
    config = load_config(path)
    assert config.daemon.workers == 4
    assert config.retry.delays == [1, 2]


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    sub = tmp_path / "ws"
    sub.mkdir()
    (sub / "stages.json").write_text(json.dumps({"state_db": "state/p.db"}))
    config = load_config(sub / "stages.json")
    assert config.state_db_path == (sub / "state" / "p.db").resolve()
    assert config.storage_url == f"sqlite:///{(sub / 'optuna.db').resolve()}"
    assert config.logs_path == (sub / "logs").resolve()


def test_per_stage_retry_overrides_global(tmp_path: Path) -> None:
    path = tmp_path / "stages.json"
    path.write_text(
        json.dumps({"stages": {"a": {"run": "m:f", "retry": {"delays": [1]}}, "b": {"run": "m:f"}}})
    )
    config = load_config(path)
    assert config.retry_delays("a") == [1]
    assert config.retry_delays("b") == [5, 30, 300]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 604800), (90, 90), ("1.5h", 5400), ("45", 45)],
)
def test_durations(value: str | int, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_every_seconds_field_takes_a_duration_and_gates_take_ranges() -> None:
    from pipeline_v2.config import parse_config

    config = parse_config({
        "daemon": {"check_interval": "5m", "health_check_interval": "1m"},
        "retry": {"delays": ["5s", "1m", "1h"]},
        "stages": {"backtest": {"run": "m:f", "timeout_seconds": "2m",
                                "gates": {"sharpe": ">= 1.0 and < 3"}},
                   "deploy": {"stop_grace_seconds": "10s", "heartbeat_timeout": "2m",
                              "restart": {"backoff": ["1s", "1m"], "window_seconds": "1m"}}},
    })
    assert (config.daemon.check_interval, config.daemon.health_check_interval) == (300, 60)
    assert config.retry.delays == [5, 60, 3600]
    deploy = config.stages["deploy"]
    assert (deploy.stop_grace_seconds, deploy.heartbeat_timeout) == (10, 120)
    assert (deploy.restart.backoff, deploy.restart.window_seconds) == ([1, 60], 60)
    assert config.stages["backtest"].timeout_seconds == 120
    gates = config.stages["backtest"].parsed_gates
    assert [str(g) for g in gates] == ["sharpe >= 1.0", "sharpe < 3.0"]
    from pipeline_v2.gates import evaluate_gates

    assert evaluate_gates(gates, {"sharpe": 2.0}) == []
    assert evaluate_gates(gates, {"sharpe": 3.5}) == ["sharpe 3.5 >= 3.0"]


def test_yaml_stages_run_in_file_order(tmp_path: Path) -> None:
    from pipeline_v2.config import load_config

    path = tmp_path / "stages.yaml"
    path.write_text("stages:\n  zeta:\n    run: m:f\n  alpha:\n    run: m:f\n"
                    "  deploy:\n    rank_by: zeta.sharpe\n")
    assert list(load_config(path).stages) == ["zeta", "alpha", "deploy"]


BAD = [
    (
        {"stages": {"deploy": {"max_atempts": 2}}},
        "stages.deploy.max_atempts: unknown key (did you mean max_attempts?)",
    ),
    (
        {"daemon": {"chek_interval": 5}},
        "daemon.chek_interval: unknown key (did you mean check_interval?)",
    ),
    (
        {"stages": {"backtest": {"run": "m:f", "max_attempts": "three"}}},
        'stages.backtest.max_attempts: expected an integer >= 1, got "three"',
    ),
    (
        {"stages": {"backtest": {"run": "m:f", "max_attempts": 0}}},
        "stages.backtest.max_attempts: expected an integer >= 1, got 0",
    ),
    ({"retry": {"delays": [5, -1]}}, "retry.delays[1]: expected a number >= 0.0, got -1"),
    (
        {"stages": {"backtest": {"run": "m:f", "timeout_seconds": -5}}},
        "stages.backtest.timeout_seconds: expected a number > 0.0, got -5",
    ),
    (
        {"stages": {"backtest": {"run": "m:f", "gates": {"sharpe": "=> 1.0"}}}},
        'stages.backtest.gates.sharpe: unknown operator "=>" in "=> 1.0" '
        '(expected one of >= <= > < == != followed by a number, or bounds joined by "and", '
        'e.g. ">= 1.0 and < 3")',
    ),
    (
        {"stages": {"backtest": {"run": "m:f", "gates": {"sharpe": ">= 1.0 or < 3"}}}},
        'stages.backtest.gates.sharpe: cannot read ">= 1.0 or < 3" (expected one of >= <= > < '
        '== != followed by a number, or bounds joined by "and", e.g. ">= 1.0 and < 3")',
    ),
    (
        {"stages": {"backtest": {"run": "m:f", "gates": {"foo.sharpe": ">= 1"}}}},
        'stages.backtest.gates.foo.sharpe: unknown stage "foo"; a gate reads this stage\'s '
        "metrics or STAGE.METRIC of an earlier stage (earlier stages: none)",
    ),
    (
        {"stages": {"backtest": {"run": "m:f", "gates": {"deploy.sharpe": ">= 1"}},
                    "deploy": {}}},
        'stages.backtest.gates.deploy.sharpe: stage "deploy" does not run before backtest; a '
        "gate reads this stage's metrics or STAGE.METRIC of an earlier stage (earlier stages: "
        "none)",
    ),
    (
        {"stages": {"backtest": {"run": "m:f"}, "deploy": {"rank_by": "nosuchstage.sharpe"}}},
        'stages.deploy.rank_by: expected "value" or STAGE.METRIC of an earlier stage '
        '(backtest), got "nosuchstage.sharpe"',
    ),
    (
        {"stages": {"deploy": {}, "backtest": {"run": "m:f"}}},
        "stages.deploy: a deploy stage must be the last stage (stages run in file order: "
        "deploy, backtest)",
    ),
    (
        {"daemon": {"check_interval": "5 minutes"}},
        'daemon.check_interval: expected a duration like 30s, 15m, 2h or 7d, got "5 minutes"',
    ),
    (
        {"stages": {"deploy": {"evaluate_after": "a week"}}},
        'stages.deploy.evaluate_after: expected a duration like 30s, 15m, 2h or 7d, got "a week"',
    ),
    (
        {"stages": {"backtest": {"run": "m:f", "command": ["x"]}}},
        'stages.backtest: expected exactly one of "run" or "command", got both',
    ),
    (
        {"stages": {"backtest": {"max_attempts": 2}}},
        'stages.backtest: expected exactly one of "run" or "command", got neither',
    ),
    ({"daemon": {"workers": True}}, "daemon.workers: expected an integer >= 1, got true"),
    (
        {"optuna": {"model_dir": "models/{trial}"}},
        'optuna.model_dir: unknown template field {trial} in "models/{trial}" (expected one of '
        "{study}, {number}, {trial_id}, {value}, {params}, {user_attrs}, {python})",
    ),
    (
        {"optuna": {"states": ["DONE"]}},
        "optuna.states[0]: expected one of 'COMPLETE', 'PRUNED' or 'FAIL', got \"DONE\"",
    ),
    (
        {"stages": {"backtest": {"run": "no_colon"}}},
        'stages.backtest.run: expected "<module>:<function>", got "no_colon"',
    ),
    ([1, 2], "expected a JSON object at the top level, got [1, 2]"),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_bad_config_names_file_key_and_value(
    invoke, tmp_path: Path, raw: object, message: str
) -> None:
    (tmp_path / "stages.json").write_text(json.dumps(raw))
    result = invoke("config", "check")
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: stages.json: {message}\n"


def test_invalid_json_gives_line_and_column(invoke, tmp_path: Path) -> None:
    (tmp_path / "stages.json").write_text('{\n  "daemon": {"workers": 2,}\n}\n')
    result = invoke("status")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: stages.json: line 2, column 27: invalid JSON: "
        "Expecting property name enclosed in double quotes\n"
    )


def test_invalid_yaml_gives_line_and_column(invoke, tmp_path: Path) -> None:
    (tmp_path / "stages.yaml").write_text("daemon:\n  workers: [1, 2\n")
    result = invoke("config", "check", "--config", "stages.yaml")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: stages.yaml: line 3, column 1: invalid YAML: ")
    assert result.stderr.count("\n") == 1


def test_missing_config(invoke) -> None:
    result = invoke("status")
    assert result.exit_code == 2
    assert result.stderr == (
        'error: stages.json: config file not found (create one with "pipeline init" '
        "or pass --config PATH)\n"
    )


def test_config_from_environment(invoke, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "other.json").write_text(json.dumps({"daemon": {"workers": 7}}))
    monkeypatch.setenv("PIPELINE_CONFIG", str(tmp_path / "other.json"))
    result = invoke("config", "show")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["daemon"]["workers"] == 7


def test_config_check_imports_callables(invoke, tmp_path: Path) -> None:
    (tmp_path / "stages.json").write_text(
        json.dumps({"stages": {"a": {"run": "no_such_module_xyz:run"}}})
    )
    result = invoke("config", "check")
    assert result.exit_code == 2
    assert result.stderr == (
        'error: stages.json: stages.a.run: cannot import module "no_such_module_xyz" '
        "(No module named 'no_such_module_xyz')\n"
    )


def test_schema_is_json_schema(invoke) -> None:
    result = invoke("config", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False
    assert {"optuna", "daemon", "retry", "stages", "notify"} <= set(schema["properties"])
    assert "base_dir" not in schema["properties"]


def test_the_shipped_stages_json_is_the_default() -> None:
    shipped = Path(__file__).resolve().parent.parent / "stages.json"
    assert json.loads(shipped.read_text()) == Config().to_json()
    assert load_config(shipped).to_json() == Config().to_json()


def test_executor_is_local_or_a_scheduler_address(write_config) -> None:
    assert Config().daemon.executor == "local"
    assert write_config({"daemon": {"executor": "tcp://10.0.0.5:8786"}}).daemon.executor == (
        "tcp://10.0.0.5:8786")
    with pytest.raises(ConfigError) as caught:
        write_config({"daemon": {"executor": "dask"}})
    assert str(caught.value).endswith(
        'stages.json: daemon.executor: expected "local" or a Dask scheduler address like '
        '"tcp://host:8786", got "dask"')


@pytest.mark.parametrize(("storage", "line"), [
    ("redis://u:pw@host/0?token=abc", 'stages.json: optuna.storage: expected sqlite://, '
     'postgresql://, mysql:// or a journal file path, got "redis://u:***@host/0?token=***"'),
    ("", 'stages.json: optuna.storage: expected at least 1 character(s), got ""'),
])
def test_a_storage_discovery_cannot_read_is_a_config_error(write_config, storage, line) -> None:
    with pytest.raises(ConfigError) as caught:
        write_config({"optuna": {"storage": storage}})
    assert str(caught.value).endswith(line)
    for fine in ("postgresql+psycopg2://u:pw@db/optuna", "journal.log", "sqlite:////abs.db"):
        assert write_config({"optuna": {"storage": fine}}).optuna.storage == fine


@pytest.mark.parametrize(("daemon", "line"), [
    ({"http_token": "short-secret"},
     'stages.json: daemon.http_token: expected at least 16 character(s), got "***"'),
    ({"http_token": 1234567}, 'stages.json: daemon.http_token: expected a string, got "***"'),
])
def test_a_bad_token_is_never_quoted_back(write_config, daemon, line) -> None:
    with pytest.raises(ConfigError) as caught:
        write_config({"daemon": daemon})
    assert str(caught.value).endswith(line)


def test_the_token_from_the_environment_needs_16_characters_too(write_config,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("PIPELINE_HTTP_TOKEN", "abc")
    with pytest.raises(ConfigError) as caught:
        write_config({})
    assert str(caught.value) == "$PIPELINE_HTTP_TOKEN: expected at least 16 characters, got 3"
    monkeypatch.setenv("PIPELINE_HTTP_TOKEN", "")  # set but empty: no token
    assert write_config({}).daemon.http_token is None
    monkeypatch.setenv("PIPELINE_HTTP_TOKEN", "x" * 16)
    assert write_config({"daemon": {"http": "0.0.0.0:0"}}).daemon.http == "0.0.0.0:0"
