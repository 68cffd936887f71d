"""`pipeline import-v1`: bring the previous systems' trials into the state DB, verdicts kept.

Two sources: the V1 JSON state file and the earlier V2 design's SQLite DB (tables trials, stages,
deployments, health). Mapping (README "Importing from V1"): finished stage verdicts are kept;
V1's paper_trading / live_trading become the deploy stage; a trial that was still in flight is
imported `paused`, so nothing runs until `pipeline resume` (or `pipeline retry`) asks.
Idempotent: a trial already in the state DB is skipped, so a second import changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_v2.config import Config
from pipeline_v2.errors import PipelineError, UsageError
from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.store import Store
from pipeline_v2.store.base import SQLITE_HEADER
from pipeline_v2.store.legacy import (
    LegacyFormatError,
    insert_imported,
    is_known,
    loads_json,
    read_v2_db,
)

S, T = StageStatus, TrialStatus
V1_STAGES = ("backtest", "cge_stress", "paper_trading", "live_trading")
DEPLOY_NAMES = ("paper_trading", "live_trading", "deploy", "paper")
VERDICTS: dict[str, StageStatus] = {
    "passed": S.PASSED, "pass": S.PASSED, "completed": S.PASSED, "complete": S.PASSED,
    "success": S.PASSED, "succeeded": S.PASSED, "done": S.PASSED, "validated": S.PASSED,
    "rejected": S.REJECTED,
    "failed": S.FAILED, "fail": S.FAILED, "error": S.FAILED, "errored": S.FAILED,
    "crashed": S.FAILED,
    "skipped": S.SKIPPED, "disabled": S.SKIPPED,
}
UNFINISHED = frozenset({"pending", "waiting", "queued", "not_started", "running", "in_progress",
                        "processing", "active", "deployed", "trading", ""})
TRADING = frozenset({"running", "active", "deployed", "trading", "in_progress"})


class ImportFileError(PipelineError):
    """The file to import is missing, unreadable or not in a format we know."""


@dataclass
class LegacyTrial:
    """One trial as an old system recorded it, before mapping."""

    key: str
    number: int
    value: float | None
    study: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    current: str | None = None
    stages: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # raw, extra
    trading_pid: int | None = None


@dataclass(frozen=True)
class Planned:
    """What one legacy trial becomes here."""

    stages: list[tuple[str, StageStatus, dict[str, Any]]]
    stage_pos: int
    status: TrialStatus
    reason: str | None = None
    paused_from: TrialStatus | None = None


@dataclass
class ImportReport:
    """What an import did (or, dry, would do)."""

    source: str
    imported: list[tuple[str, str]] = field(default_factory=list)  # ref, status
    skipped: list[tuple[str, str]] = field(default_factory=list)  # ref, why
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False


# -- reading ------------------------------------------------------------------------------------


def _quote(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | int | float | bool) or value is None \
        else type(value).__name__


def _status_of(entry: Any) -> tuple[str, dict[str, Any]] | None:
    """A V1 per-stage field: "passed", or {"status": "passed", "metrics": {...}}."""
    if isinstance(entry, str):
        return entry.strip().lower(), {}
    if isinstance(entry, dict) and isinstance(entry.get("status"), str):
        results = entry.get("metrics") or entry.get("results")
        return entry["status"].strip().lower(), {"results": results} if results else {}
    return None


def read_v1_json(path: Path, doc: Any) -> list[LegacyTrial]:
    """The V1 state file: {"trials": {key: {trial_number, value, current_stage, <stage>: status,
    retry_counts}}}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("trials"), dict):
        got = f"keys {sorted(doc)[:5]}" if isinstance(doc, dict) else (
            f"a JSON {'array' if isinstance(doc, list) else 'value'} {json.dumps(doc)[:60]}")
        raise ImportFileError(f'{path}: expected a V1 state file with a "trials" object, got '
                              f"{got}")
    study = doc.get("study_name") or doc.get("study")
    trials = []
    for key, entry in doc["trials"].items():
        where = f"{path}: trials.{key}"
        if not isinstance(entry, dict):
            raise ImportFileError(f"{where}: expected an object, got {_quote(entry)}")
        number = entry.get("trial_number")
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ImportFileError(f"{where}.trial_number: expected an integer >= 0, got "
                                  f"{_quote(number)}")
        value = entry.get("value")
        if value is not None and not isinstance(value, int | float):
            raise ImportFileError(f"{where}.value: expected a number or null, got "
                                  f"{_quote(value)}")
        retries = entry.get("retry_counts") or {}
        if not isinstance(retries, dict):
            raise ImportFileError(f"{where}.retry_counts: expected an object, got "
                                  f"{_quote(retries)}")
        stages: dict[str, tuple[str, dict[str, Any]]] = {}
        for name in V1_STAGES:
            if name not in entry or entry[name] is None:
                continue
            found = _status_of(entry[name])
            if found is None:
                raise ImportFileError(f"{where}.{name}: expected a status string, got "
                                      f"{_quote(entry[name])}")
            raw, extra = found
            stages[name] = (raw, extra | {"retries": int(retries.get(name) or 0)})
        trials.append(LegacyTrial(str(key), number, value, study,
                                  entry.get("params") if isinstance(entry.get("params"), dict)
                                  else {}, entry.get("current_stage"), stages))
    return trials


def read_v2(path: Path) -> tuple[list[LegacyTrial], int]:
    """The earlier V2 design's DB, as legacy trials, and its health row count."""
    try:
        rows, health = read_v2_db(path)
    except LegacyFormatError as exc:
        raise ImportFileError(f"{path}: {exc}") from None
    trials = []
    for row in rows:
        number = row.get("trial_number")
        if not isinstance(number, int):
            raise ImportFileError(f"{path}: trials id {row.get('id')}: trial_number: expected "
                                  f"an integer, got {_quote(number)}")
        stages: dict[str, tuple[str, dict[str, Any]]] = {}
        for stage in row["stages"]:
            stages[str(stage.get("stage_name"))] = (str(stage.get("status") or "").lower(), {
                "results": loads_json(stage.get("results")), "error": stage.get("error_message"),
                "retries": max(0, int(stage.get("attempts") or 1) - 1)})
        live = [d for d in row["deployments"] if str(d.get("status")).lower() in TRADING]
        params = loads_json(row.get("params"))
        trials.append(LegacyTrial(
            f"trials id {row['id']}", number, row.get("value"), row.get("study_name"),
            params if isinstance(params, dict) else {}, None, stages,
            live[-1].get("pid") if live else None))
    return trials, health


def read_source(path: Path) -> tuple[str, list[LegacyTrial], list[str]]:
    """Tell the format from the file's content and read it: (kind, trials, notes)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        raise ImportFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from None
    if head == SQLITE_HEADER:
        trials, health = read_v2(path)
        notes = [f"health: {health} row(s) not imported (the daemon records its own)"] \
            if health else []
        return "v2-db", trials, notes
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) \
            else ""
        raise ImportFileError(f"{path}: neither a V1 JSON state file nor an earlier V2 SQLite "
                              f"DB: not valid JSON{where}") from None
    return "v1-json", read_v1_json(path, doc), []


# -- mapping (pure) -----------------------------------------------------------------------------


def our_stage(name: str, config: Config) -> str | None:
    """The stage here that an old stage name stands for."""
    if name in config.stages:
        return name
    deploy = config.deploy_stage
    return deploy[0] if deploy and name in DEPLOY_NAMES else None


def plan_trial(legacy: LegacyTrial, config: Config) -> Planned | str:
    """Our stage rows and trial status for one legacy trial, or why it cannot be imported."""
    verdicts: dict[str, tuple[StageStatus | None, str, dict[str, Any]]] = {}
    for name, (raw, extra) in legacy.stages.items():
        if raw not in VERDICTS and raw not in UNFINISHED:
            return (f'unknown status "{raw}" for {name} (expected one of '
                    f"{', '.join(sorted({*VERDICTS, *UNFINISHED} - {''}))})")
        ours = our_stage(name, config)
        if ours is None:
            continue
        verdict = VERDICTS.get(raw)
        if ours in verdicts and name == "live_trading" and verdict in (None, S.SKIPPED):
            continue  # after paper trading, live's verdict is the later word once it has one
        verdicts[ours] = (verdict, raw, extra)
    rows: list[tuple[str, StageStatus, dict[str, Any]]] = []
    status, pos, reason, paused_from = T.PASSED, len(config.stages), None, None
    blocked = False
    for index, (name, stage) in enumerate(config.stages.items()):
        verdict, raw, extra = verdicts.get(name, (None, "", {}))
        if blocked:
            rows.append((name, S.PENDING if stage.enabled else S.SKIPPED, {}))
            continue
        if verdict is None and not stage.enabled:
            verdict = S.SKIPPED
        detail = {"attempts": extra.get("retries", 0) + (1 if verdict in (
            S.PASSED, S.REJECTED, S.FAILED) else 0)} | {
            k: v for k, v in extra.items() if k in ("results", "error") and v}
        if verdict in (S.PASSED, S.SKIPPED):
            rows.append((name, verdict, detail))
            continue
        blocked, pos = True, index
        if verdict in (S.REJECTED, S.FAILED):
            rows.append((name, verdict, detail | {"reason": "imported verdict"}))
            status = T.REJECTED if verdict == S.REJECTED else T.FAILED
            reason = f"{name}: {raw} in the old system"
            continue
        rows.append((name, S.PENDING, detail | {"attempts": 0}))
        deploy = config.deploy_stage
        paused_from = T.PASSED if deploy and name == deploy[0] else (
            T.PROCESSING if index else T.PENDING)
        status = T.PAUSED
        if legacy.trading_pid is not None or (paused_from == T.PASSED and raw in TRADING):
            pid = f" (pid {legacy.trading_pid})" if legacy.trading_pid else ""
            reason = (f"was paper trading in the old system{pid}, not adopted; "
                      "`pipeline resume` deploys it here")
        else:
            where = f"{name} {raw}".strip() if raw else f"{name} not started"
            reason = f"imported mid-pipeline ({where}); `pipeline resume` continues it here"
    if not blocked:
        deploy = config.deploy_stage
        passed_deploy = deploy is not None and dict((n, s) for n, s, _ in rows).get(
            deploy[0]) == S.PASSED
        status = T.VALIDATED if passed_deploy else T.PASSED
    return Planned(rows, pos, status, reason, paused_from)


def resolve_study(given: str | None, config: Config) -> str:
    """--study, else the config's only study."""
    if given:
        return given
    if len(config.optuna.studies) == 1 and config.optuna.studies[0] != "*":
        return config.optuna.studies[0]
    raise UsageError(f"--study: name the study these trial numbers belong to (the config "
                     f"watches {', '.join(config.optuna.studies)})")


def model_dir(config: Config, study: str, legacy: LegacyTrial) -> str:
    """The configured model_dir template for this trial ('' when it needs Optuna fields)."""
    try:
        return config.optuna.model_dir.format(study=study, number=legacy.number,
                                              value=legacy.value, trial_id="",
                                              params=legacy.params, user_attrs={})
    except (KeyError, IndexError, ValueError, AttributeError):
        return ""


# -- the command --------------------------------------------------------------------------------


def import_v1(store: Store, config: Config, path: Path, study: str | None,
              dry_run: bool = False, now: float | None = None) -> ImportReport:
    """Import every trial of the file that the state DB does not know yet."""
    kind, trials, notes = read_source(path)
    stamp = time.time() if now is None else now
    report = ImportReport(f"{path} ({kind})", notes=notes, dry_run=dry_run)
    # The file's own study name is used when it has one; --study overrides it.
    needs = study is not None or any(t.study is None for t in trials)
    fallback = resolve_study(study, config) if needs else None
    seen: set[tuple[str, int]] = set()
    with store.transaction():
        for legacy in trials:
            name = study or legacy.study or fallback
            assert name is not None
            ref = f"{name}:{legacy.number}"
            if (name, legacy.number) in seen:
                report.skipped.append((ref, f"{legacy.key} repeats trial number "
                                       f"{legacy.number}"))
                continue
            seen.add((name, legacy.number))
            if is_known(store, name, legacy.number):
                report.skipped.append((ref, "already in the state DB"))
                continue
            planned = plan_trial(legacy, config)
            if isinstance(planned, str):
                report.skipped.append((ref, planned))
                continue
            if not dry_run:
                fields = {"study": name, "number": legacy.number, "value": legacy.value,
                          "params": legacy.params,
                          "model_dir": model_dir(config, name, legacy)}
                insert_imported(store, fields, planned.stages, planned.stage_pos, planned.status,
                                planned.reason, planned.paused_from, report.source, stamp)
            report.imported.append((ref, planned.status.value))
    return report


def summarize(report: ImportReport) -> Mapping[str, Any]:
    """The JSON form of a report."""
    return {"source": report.source, "dry_run": report.dry_run,
            "imported": [{"trial": r, "status": s} for r, s in report.imported],
            "skipped": [{"trial": r, "reason": w} for r, w in report.skipped],
            "notes": report.notes}
