"""A stage attempt does no filesystem work it does not need."""

from __future__ import annotations

from pathlib import Path

from pipeline_v2.stages.worker import run_task


def task(tmp_path: Path, target: str) -> dict:
    run_dir = tmp_path / "logs" / "trials" / "s" / "0"
    context = {"study": "s", "number": 0, "params": {}, "user_attrs": {}, "value": 1.0,
               "values": [1.0], "trial_id": 1, "model_dir": "", "run_dir": str(run_dir),
               "stage": "backtest", "stage_params": {}, "results": {}, "attempt": 1,
               "storage": "", "config_dir": str(tmp_path)}
    return {"target": target, "context": context, "log_path": str(run_dir / "backtest.log")}


def test_a_no_op_attempt_makes_no_folder_and_no_log(tmp_path: Path) -> None:
    assert run_task(task(tmp_path, "tests.stage_fixtures_lazy:noop")) == ("ok", {"ok": 1.0})
    assert not (tmp_path / "logs").exists()


def test_the_folder_and_log_appear_when_the_stage_uses_them(tmp_path: Path) -> None:
    assert run_task(task(tmp_path, "tests.stage_fixtures_lazy:writes")) == ("ok", {"ok": 1.0})
    run_dir = tmp_path / "logs" / "trials" / "s" / "0"
    assert (run_dir / "out.txt").read_text() == "x"
    assert '"event": "wrote"' in (run_dir / "backtest.log").read_text()
