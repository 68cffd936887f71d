"""Nothing one part of a turn raises ends the daemon: it becomes a health entry, and a full
disk pauses starting anything new until a probe write succeeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline_v2 import faults, plan
from pipeline_v2.errors import StoreError
from pipeline_v2.logs import get_logger
from pipeline_v2.store import Store

DISK_RETRY_S = 5.0  # while the disk is full, probe for space this often
log = get_logger("daemon")


class GuardMixin:
    """The daemon's fault handling: guarded calls, failing components, the full-disk state."""

    store: Store
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    space_probe: Callable[[], None]
    failing: set[str]
    disk_full: str | None
    next_space_probe: float
    unrecorded: dict[int, plan.Outcome]
    corrupt: bool = False

    def _heartbeat(self, now: float, status: str) -> None:
        raise NotImplementedError

    def record(self, stage_id: int, outcome: plan.Outcome, now: float) -> None:
        raise NotImplementedError

    def _record_safely(self, stage_id: int, outcome: plan.Outcome, now: float) -> None:
        """Record one outcome; if that raises, record the failure on the stage instead."""
        try:
            with self.store.savepoint():
                self.record(stage_id, outcome, now)
        except Exception as exc:
            if faults.is_disk_full(exc):
                raise  # nothing can be written: keep it for the next turn
            log.exception("record_failed", stage_id=stage_id, outcome=outcome.kind)
            try:
                with self.store.savepoint():
                    self.record(stage_id, plan.Outcome(
                        "error", message=f"cannot record the outcome: {faults.describe(exc)}"),
                        now)
            except Exception:
                log.exception("record_failed", stage_id=stage_id, outcome="error")
                self._set_failing("attempts", f"stage {stage_id}: {faults.describe(exc)}", now)
        self.unrecorded.pop(stage_id, None)

    def _guard(self, component: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one part of a turn; an exception is logged and becomes a health entry."""
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            now = self.clock()
            if faults.is_corrupt(exc):
                log.error(f"{component}_failed", error=faults.describe(exc))
                if not self.corrupt:  # stop at once, in one line; never write on a bad page
                    self.corrupt = True
                    message = self.store.corrupt_message()
                    if message.endswith("(PRAGMA quick_check: ok)"):  # a page it did not scan
                        message = f"{self.store.path}: the state DB is corrupt ({exc})"
                    raise StoreError(message) from None
                return None
            if faults.is_disk_full(exc):
                self._on_disk_full(exc, now)
            else:
                log.exception(f"{component}_failed", error=faults.describe(exc))
                self._set_failing(component, faults.describe(exc), now)
            return None
        if component in self.failing:
            self.failing.discard(component)
            log.info(f"{component}_recovered")
        return result

    def _set_failing(self, component: str, reason: str, now: float) -> None:
        self.failing.add(component)
        try:
            self.store.set_health(component, "degraded", reason, now)
        except Exception as exc:  # the state DB itself is the trouble: the log must do
            log.error("health_write_failed", component=component, error=faults.describe(exc))

    def _on_disk_full(self, exc: BaseException, now: float) -> None:
        """Start nothing new until a probe write succeeds; say so in health."""
        first = self.disk_full is None
        self.disk_full = f"disk full: {faults.describe(exc)}; nothing new starts until it frees"
        self.next_space_probe = self.monotonic() + DISK_RETRY_S
        if first:
            log.error("disk_full", error=faults.describe(exc))
        self._set_failing("disk", self.disk_full, now)

    def _probe_space(self, now: float, mono: float) -> None:
        try:
            self.space_probe()
        except OSError as exc:
            self.next_space_probe = mono + DISK_RETRY_S
            if not faults.is_disk_full(exc):
                raise
            return
        log.info("disk_space_back")
        self.disk_full = None
        self.failing.discard("disk")
        self._guard("daemon", self._heartbeat, now, "running")

