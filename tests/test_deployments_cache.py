"""The daemon's deployment reads come from memory until the DB changes (here or elsewhere)."""

from __future__ import annotations

from pathlib import Path

from pipeline_v2.models import DeploymentStatus, StageStatus, TrialStatus
from pipeline_v2.store import Store

D = DeploymentStatus
STAGES = [("deploy", StageStatus.PENDING)]


def deployed(store: Store, number: int) -> int:
    with store.transaction():
        trial_id = store.add_trial({"study": "s", "number": number}, STAGES, 0, 1.0)
        store.conn.execute("UPDATE trials SET status = ? WHERE id = ?",
                           [TrialStatus.PASSED.value, trial_id])
    return store.begin_deployment(trial_id, "deploy", f"/tmp/run{number}", 1.0, "test").id


def test_unchanged_deployments_are_not_read_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    deployed(store, 0)
    first = store.deployments(D.BACKOFF)
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    for _ in range(3):
        assert store.deployments(D.BACKOFF) == first
        assert [d.id for d, _ in store.deployments_with_trials(D.BACKOFF)] == [first[0].id]
    assert len([sql for sql in seen if "FROM deployments" in sql]) == 1


def test_a_change_here_or_in_another_process_is_seen(tmp_path: Path) -> None:
    store, other = Store(tmp_path / "p.db"), Store(tmp_path / "p.db")
    first = deployed(store, 0)
    assert [d.id for d in store.deployments(D.BACKOFF)] == [first]
    second = deployed(other, 1)  # another connection: data_version moves
    assert [d.id for d in store.deployments(D.BACKOFF)] == [first, second]
    dep = store.get_deployment(first)
    store.set_deployment_status(dep, D.STOPPED, 2.0, "stop")  # this connection's own write
    assert [d.id for d in store.deployments(D.BACKOFF)] == [second]
    assert [d.id for d in store.deployments(D.STOPPED)] == [first]
