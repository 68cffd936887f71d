"""The loop sleeps until its next real due time in every state: loop turns counted over a
simulated period with an injected clock (the selector's wait advances it)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline_v2.daemon import Daemon
from pipeline_v2.models import TrialStatus
from tests.engine_helpers import FIX, run, store_for, workspace
from tests.test_deploy import stages

MAX_TURNS = 2000


pytestmark = pytest.mark.usefixtures("no_trader_outlives_its_test")


class SimulatedDaemon(Daemon):
    """Each wait advances a simulated clock by its full timeout but really waits at most
    `real_wait` s; a loop that asks to wait 0 s forever is stopped at MAX_TURNS."""

    def __init__(self, path: Path, real_wait: float = 0.01, **kwargs) -> None:
        self.offset = 0.0
        self.waits = 0
        self.real_wait = real_wait
        super().__init__(path, clock=lambda: time.time() + self.offset,
                         monotonic=lambda: time.monotonic() + self.offset, **kwargs)

    def _select(self, timeout: float):
        self.waits += 1
        assert self.waits < MAX_TURNS, f"the loop spins: {self.waits} turns"
        events = self.selector.select(min(timeout, self.real_wait))
        if not events:
            self.offset += max(0.0, timeout - self.real_wait)
        return events


def test_no_spin_while_a_promoted_deployment_waits_for_a_slot(tmp_path: Path) -> None:
    # One slot, no replacements. The first trial to pass deploys, is validated after 20 s and
    # keeps trading (holding the slot); promotion then creates the other one's deployment,
    # which must wait for that slot.
    path = workspace(tmp_path, stages("good", max_deployments=1, evaluate_after="20s",
                                      min_improvement=100,
                                      heartbeat_timeout=600, timeout_seconds=600), trials=2,
                     daemon={"check_interval": 600, "workers": 2, "http": None})
    daemon = SimulatedDaemon(path, mode="forever", timeout=40)
    summary = daemon.run()
    store = store_for(path)
    statuses = sorted(t.status.value for t in store.list_trials())
    assert statuses == [TrialStatus.DEPLOYED.value, TrialStatus.VALIDATED.value]
    assert len(store.deployments("backoff")) == 1 and len(store.deployments("running")) == 1
    assert summary.reason == "timeout"
    assert summary.turns <= 40 + 20  # about one turn a (simulated) second at most
    run(path, mode="forever", timeout=0.2)


def test_no_spin_under_once_while_an_attempt_runs(tmp_path: Path) -> None:
    # Two workers, three trials taking 0.3, 0.6 and 0.9 s: once the first ends, a worker is
    # free and trial 2 is due, but --once starts nothing after its first turn.
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:sleep_x", "params": {"unit": 0.3}}},
                     trials=3)
    summary = SimulatedDaemon(path, real_wait=1.0, mode="once").run()
    assert summary.reason == "once" and summary.attempts == 2
    assert summary.turns <= 10


def test_until_idle_waits_for_a_catch_up_done_in_slices(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Each poll stops after one page (3 trials) beyond its cursor; the next goes on at once,
    # not check_interval later, and the daemon is not idle until every trial is in.
    import pipeline_v2.daemon as daemon_module
    import pipeline_v2.discovery as discovery_module

    monkeypatch.setattr(discovery_module, "PAGE", 3)
    monkeypatch.setattr(daemon_module, "SLICE_S", 0.0)
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok", "max_attempts": 1}}, trials=10,
                     daemon={"check_interval": 600, "workers": 2, "http": None})
    daemon = SimulatedDaemon(path, mode="until_idle", timeout=60)
    summary = daemon.run()
    assert summary.idle
    statuses = [t.status for t in store_for(path).list_trials()]
    assert statuses == [TrialStatus.PASSED] * 10
    assert daemon.offset < 60  # never waited a check_interval between slices


def test_until_idle_ends_while_everything_is_paused(tmp_path: Path, invoke) -> None:
    # Work held by `pause --all` (or a trial's own pause) is not work the daemon can do:
    # --until-idle ends idle, starting nothing, instead of running until --timeout.
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok", "max_attempts": 1}}, trials=3,
                     daemon={"check_interval": 600, "workers": 2, "http": None})
    assert invoke("pause", "--all").exit_code == 0
    summary = SimulatedDaemon(path, mode="until_idle", timeout=600).run()
    assert (summary.reason, summary.idle, summary.attempts) == ("idle", True, 0)
    store = store_for(path)
    assert [t.status for t in store.list_trials()] == [TrialStatus.PENDING] * 3
    assert invoke("pause", "0").exit_code == 0
    assert invoke("resume", "--all").exit_code == 0
    summary = SimulatedDaemon(path, mode="until_idle", timeout=600).run()
    assert (summary.reason, summary.idle, summary.attempts) == ("idle", True, 2)
    assert [t.status for t in store.list_trials()] == (
        [TrialStatus.PAUSED, TrialStatus.PASSED, TrialStatus.PASSED])
