"""Names to paths: injective, bounded, stable, readable — and a daemon that survives any name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline_v2.models import Trial, TrialStatus
from pipeline_v2.paths import folder_name, trial_dir
from tests.engine_helpers import ROOT, run, store_for, workspace

HOSTILE = [
    "my_study", "my-study", "my.study", "my study", "my/study", "my\\study", "my:study",
    "my_study ", " my_study", "my__study", "my_/study", "../etc", "..", ".", "", "-rf",
    ".hidden", "a\x00b", "a\nb", "a\rb", "a~0123456789abcdef", "a@1", "ü", "u", "日本語",
    "x" * 100, "x" * 101, "x" * 300, "é" * 200, "y" * 100_000, "y" * 100_001, "\ud800",
]


def test_plain_names_map_to_themselves() -> None:
    for name in ("my_study", "s", "Study-2.v1", "x" * 100):
        assert folder_name(name) == name


def test_the_mapping_is_injective_over_hostile_names() -> None:
    folders = [folder_name(n) for n in HOSTILE]
    assert len(set(folders)) == len(HOSTILE)


@pytest.mark.parametrize("name", HOSTILE)
def test_every_folder_is_one_short_safe_component(name: str) -> None:
    folder = folder_name(name)
    assert len(folder.encode()) <= 100
    assert folder not in (".", "..") and not folder.startswith((".", "-"))
    assert "/" not in folder and "\x00" not in folder and "\n" not in folder
    assert folder.isascii() and folder.isprintable()


def test_the_mapping_is_stable_across_versions() -> None:
    # Folders outlive releases: these exact values are part of the on-disk format.
    assert folder_name("my study") == "my_study~67549874cb879af6"
    assert folder_name("../etc") == "etc~f7f9121fdb53d8de"
    assert folder_name("日本語") == "_~77710aedc74ecfa3"


def test_names_differing_only_in_punctuation_get_their_own_trial_folders(tmp_path: Path) -> None:
    def trial(study: str) -> Trial:
        return Trial(id=1, study=study, number=3, status=TrialStatus.PASSED)

    dirs = {trial_dir(tmp_path, trial(s), "deployments") for s in ("a/b", "a_b", "a b", "a.b")}
    assert len(dirs) == 4
    assert trial_dir(tmp_path, trial("my_study")) == tmp_path / "trials" / "my_study" / "3"
    for path in dirs:
        assert path.parent.parent == tmp_path / "deployments"


def test_a_study_name_over_255_bytes_is_deployed(tmp_path: Path) -> None:
    name = "s" * 300 + "/../" + "é" * 20
    trader = str(ROOT / "tests" / "fixtures" / "trader.py")
    path = workspace(tmp_path, {
        "a": {"run": "tests.fixtures.stages:metric_from_param", "max_attempts": 1},
        "deploy": {"command": [sys.executable, trader, "finish", "{run_dir}", "{params[x]}"],
                   "rank_by": "a.sharpe", "gates": {"sharpe": ">= 0.2"}},
    }, study_name=name)
    assert run(path).idle
    store = store_for(path)
    [trial] = store.list_trials()
    assert trial.status == TrialStatus.VALIDATED
    run_dir = Path(store.latest_deployment(trial.id).run_dir)
    assert run_dir.parent.parent == tmp_path / "logs" / "deployments"
    assert (run_dir / "metrics.json").exists()
