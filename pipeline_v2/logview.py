"""Read the logs for `pipeline logs`: the daemon's JSON lines, or one trial's story.

A trial's story interleaves, by time, its audit events (state DB), the daemon's lines about it,
its stage logs and its trader's log. `follow` keeps reading across size rotation.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline_v2.config import Config
from pipeline_v2.errors import NotFoundError
from pipeline_v2.logs import LOG_FILE
from pipeline_v2.paths import trial_dir
from pipeline_v2.redact import redact
from pipeline_v2.store import Store
from pipeline_v2.supervisor import LOG_FILE as TRADER_LOG

FOLLOW_POLL_S = 0.2
TAIL_BLOCK = 65536  # bytes read at a time from a log's end


@dataclass(frozen=True)
class LogLine:
    """One line from any source; `ts` is None when the line carries no time of its own."""

    ts: float | None
    source: str
    text: str
    data: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The `--json` form: the parsed line when it was JSON, else its text."""
        return {"ts": self.ts, "source": self.source} | (
            {"data": self.data} if self.data is not None else {"text": self.text})


def parse_ts(value: Any) -> float | None:
    """An ISO 8601 string or a Unix time as a float."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def parse_line(text: str, source: str, last_ts: float | None = None) -> LogLine:
    """A JSON log line (its `timestamp`), or plain text that inherits the previous line's time."""
    text = text.rstrip("\n")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            ts = parse_ts(data.get("timestamp")) or last_ts
            return LogLine(ts, source, text, redact(data))
    return LogLine(last_ts, source, redact(text))


def read_file(path: Path, source: str, since: float | None = None,
              keep: int | None = None) -> list[LogLine]:
    """A file's lines, timed (plain lines before the first timed one get `since`), streamed:
    with `keep`, only the last `keep` are held, whatever the file's size."""
    lines: deque[LogLine] = deque(maxlen=keep or None)
    last = since
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                line = parse_line(raw, source, last)
                last = line.ts
                lines.append(line)
    except FileNotFoundError:
        pass
    return list(lines)


def last_lines(path: Path, count: int, block: int = TAIL_BLOCK) -> list[str]:
    """The file's last `count` lines, read backwards a block at a time from its end (memory
    and time bounded by those lines, not by the file)."""
    if count <= 0:
        return []
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return []
    with fh:
        end = fh.seek(0, os.SEEK_END)
        chunks: list[bytes] = []
        newlines, pos = 0, end
        while pos > 0 and newlines <= count:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    text = b"".join(reversed(chunks)).decode("utf-8", errors="replace")
    lines = text.splitlines()
    if pos > 0:
        lines = lines[1:]  # the first one may be cut: it is not among the last `count` anyway
    return lines[-count:]


def rotated(path: Path) -> list[Path]:
    """A log and its rotated copies, oldest first (`x.jsonl.5` ... `x.jsonl.1`, `x.jsonl`)."""
    backups = sorted((p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
                     key=lambda p: -int(p.suffix[1:]))
    return [*backups, path]


def daemon_log(config: Config) -> Path:
    """Where the daemon writes its JSON lines."""
    return config.logs_path / LOG_FILE


def tail_daemon(config: Config, lines: int) -> list[LogLine]:
    """The daemon's last `lines` lines, across its rotated files, read from their ends."""
    raw: list[str] = []
    for path in reversed(rotated(daemon_log(config))):  # newest first, until there are enough
        raw = last_lines(path, lines - len(raw)) + raw
        if len(raw) >= lines:
            break
    out, last = [], None
    for text in raw:
        line = parse_line(text, "daemon", last)
        last = line.ts
        out.append(line)
    return out


def daemon_lines_about(config: Config, trial_id: int, ref: str,
                       keep: int | None = None) -> list[LogLine]:
    """The daemon's lines about one trial, streamed over its rotated files (only lines naming
    a trial are parsed; with `keep`, only the last `keep` matches are held)."""
    found: deque[LogLine] = deque(maxlen=keep or None)
    for path in rotated(daemon_log(config)):
        try:
            fh = path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        with fh:
            for raw in fh:
                if '"trial' not in raw:  # every line about a trial has trial_id or trial
                    continue
                line = parse_line(raw, "daemon")
                if _is_about(line, trial_id, ref):
                    found.append(line)
    return list(found)


def _is_about(line: LogLine, trial_id: int, ref: str) -> bool:
    data = line.data or {}
    return data.get("trial_id") == trial_id or data.get("trial") == ref


TrialFile = tuple[Path, str, float | None]  # path, source name, when it started


def trial_sources(store: Store, config: Config, ref: str, stage: str | None,
                  keep: int | None = None) -> tuple[list[LogLine], list[TrialFile]]:
    """A trial's audit events, the daemon's lines about it (the last `keep` of those), and the
    files that tell the rest of its story (stage logs, trader log)."""
    trial = store.find_trial(ref)
    stages = store.stages_of(trial.id)
    if stage is not None and stage not in {s.name for s in stages}:
        known = ", ".join(s.name for s in stages) or "none"
        raise NotFoundError(f'trial {trial.ref} has no stage "{stage}" (stages: {known})')
    events = [LogLine(e["ts"], "event", " ".join(str(p) for p in (
        e["kind"], e["stage"] and f"[{e['stage']}]", e["message"]) if p), redact(e))
        for e in store.events_of(trial.id) if stage is None or e["stage"] == stage]
    run_dir = trial_dir(config.logs_path, trial)
    files: list[TrialFile] = [(run_dir / f"{s.name}.log", s.name, s.started_at)
                              for s in stages if stage in (None, s.name)]
    deploy = config.deploy_stage
    if stage is None or (deploy and stage == deploy[0]):
        deployment = store.latest_deployment(trial.id)
        trader_dir = Path(deployment.run_dir) if deployment else trial_dir(
            config.logs_path, trial, "deployments")
        files.append((trader_dir / TRADER_LOG, "trader",
                      deployment.started_at if deployment else None))
    daemon = daemon_lines_about(config, trial.id, ref, keep)
    return events + daemon, files


def interleave(groups: Iterable[list[LogLine]], lines: int | None) -> list[LogLine]:
    """Merge by time; lines without a time sort first. Stable within a source."""
    merged = sorted((line for group in groups for line in group),
                    key=lambda line: line.ts if line.ts is not None else float("-inf"))
    return merged[-lines:] if lines else merged


class Follower:
    """Print-what-is-new over files that may be rotated (renamed away) or truncated."""

    def __init__(self, files: list[tuple[Path, str]],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sleep = sleep
        self.files = files
        self.handles: dict[Path, Any] = {}
        self.inodes: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.last_ts: dict[Path, float | None] = {}
        for path, _ in files:
            self._open(path, at_end=True)

    def _open(self, path: Path, at_end: bool) -> None:
        try:
            fh = path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        if at_end:
            fh.seek(0, os.SEEK_END)
        self.handles[path] = fh
        self.inodes[path] = os.fstat(fh.fileno()).st_ino
        self.partial[path] = ""

    def _drain(self, path: Path, source: str) -> Iterator[LogLine]:
        fh = self.handles.get(path)
        if fh is None:
            return
        text = self.partial[path] + fh.read()
        *complete, self.partial[path] = text.split("\n")
        for raw in complete:
            line = parse_line(raw, source, self.last_ts.get(path))
            self.last_ts[path] = line.ts
            yield line

    def poll(self) -> Iterator[LogLine]:
        """Whatever was written since the last poll, in file order."""
        for path, source in self.files:
            yield from self._drain(path, source)  # the rest of the file we have open
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # rotated away and not yet re-created: keep the old handle
            fh = self.handles.get(path)
            if fh is None or stat.st_ino != self.inodes[path]:
                if fh is not None:
                    fh.close()
                self._open(path, at_end=False)  # a new file: read it from its start
                yield from self._drain(path, source)
            elif stat.st_size < fh.tell():
                fh.seek(0)  # truncated in place
                self.partial[path] = ""
                yield from self._drain(path, source)

    def follow(self) -> Iterator[LogLine]:
        """Poll forever (until the caller stops iterating, or Ctrl-C)."""
        try:
            while True:
                yield from self.poll()
                self.sleep(FOLLOW_POLL_S)
        finally:
            self.close()

    def close(self) -> None:
        """Close every file it holds."""
        for fh in self.handles.values():
            fh.close()
        self.handles.clear()


def format_line(line: LogLine) -> str:
    """One line for a person: time, source, level and event, then the other fields."""
    stamp = "-" if line.ts is None else datetime.fromtimestamp(line.ts).isoformat(
        sep=" ", timespec="milliseconds")
    if line.data is not None and line.source != "event":
        data = dict(line.data)
        data.pop("timestamp", None)
        head = f"{data.pop('level', ''):<7} {data.pop('event', '')}"
        rest = " ".join(f"{k}={v}" for k, v in data.items())
        return f"{stamp} {line.source:<10} {head} {rest}".rstrip()
    return f"{stamp} {line.source:<10} {line.text}"
