"""Prometheus metrics read from the state DB at scrape time (a custom prometheus-client Collector).

Counters come from the audit trail and the tables, never from process memory, so they survive a
daemon restart and agree with `pipeline status`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from pipeline_v2.config import Config
from pipeline_v2.models import DeploymentStatus, TrialStatus
from pipeline_v2.monitor import loop_metrics
from pipeline_v2.status import daemon_alive, pipeline_health, unwritable
from pipeline_v2.store import Store, observe

P = "pipeline"


class PipelineCollector(Collector):
    """Every pipeline metric, computed from one read-only store per scrape."""

    def __init__(self, store: Callable[[], Store], config: Callable[[], Config],
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.config, self.clock = store, config, clock

    def collect(self) -> Iterator[Metric]:
        """Build the families (the caller holds the store's lock)."""
        store, config, now = self.store(), self.config(), self.clock()
        yield from self._trials(store)
        yield from self._stages(store)
        yield from self._deployments(store, now)
        yield from self._daemon(store, config, now)

    def _trials(self, store: Store) -> Iterator[Metric]:
        counts = store.trial_counts()
        trials = GaugeMetricFamily(f"{P}_trials", "Trials by status.", labels=["status"])
        for status in TrialStatus:
            trials.add_metric([status.value], counts.get(status.value, 0))
        yield trials
        yield CounterMetricFamily(f"{P}_discovered_trials", "Trials discovered (or imported).",
                                  value=observe.trials_total(store))

    def _stages(self, store: Store) -> Iterator[Metric]:
        attempts = CounterMetricFamily(f"{P}_stage_attempts", "Finished stage attempts.",
                                       labels=["stage", "outcome"])
        retries = CounterMetricFamily(f"{P}_stage_retries", "Attempts that erred and were put "
                                      "back for a retry (or were interrupted).", labels=["stage"])
        for (stage, outcome), n in sorted(observe.attempt_outcomes(store).items()):
            attempts.add_metric([stage, outcome], n)
            if outcome == "error":
                retries.add_metric([stage], n)
        yield attempts
        yield retries
        rejections = CounterMetricFamily(f"{P}_gate_rejections", "Trials rejected by a gate.",
                                         labels=["stage"])
        for stage, n in sorted(observe.event_counts(store, "stage.rejected").items(),
                               key=lambda kv: str(kv[0])):
            rejections.add_metric([stage or ""], n)
        yield rejections
        durations = HistogramMetricFamily(f"{P}_stage_duration_seconds",
                                          "Duration of each stage's final attempt.",
                                          labels=["stage"])
        for stage, (cumulative, total, _count) in sorted(observe.stage_durations(store).items()):
            edges = [*map(str, observe.DURATION_BUCKETS), "+Inf"]
            durations.add_metric([stage], list(zip(edges, cumulative, strict=True)), total)
        yield durations

    def _deployments(self, store: Store, now: float) -> Iterator[Metric]:
        counts = observe.deployment_counts(store)
        deployments = GaugeMetricFamily(f"{P}_deployments", "Deployments by status.",
                                        labels=["status"])
        for status in DeploymentStatus:
            deployments.add_metric([status.value], counts.get(status.value, 0))
        yield deployments
        yield CounterMetricFamily(f"{P}_trader_restarts", "Paper-trader restarts after a crash.",
                                  value=observe.restarts_total(store))
        yield CounterMetricFamily(f"{P}_trader_crash_loops", "Traders given up after a crash "
                                  "loop.", value=sum(observe.event_counts(
                                      store, "deployment.crash_loop").values()))
        equity = GaugeMetricFamily(f"{P}_paper_equity", "Paper equity of each live deployment.",
                                   labels=["trial"])
        age = GaugeMetricFamily(f"{P}_trader_heartbeat_age_seconds",
                                "Seconds since each live trader's heartbeat.", labels=["trial"])
        for dep in observe.deployment_facts(store):
            if dep["status"] not in (DeploymentStatus.RUNNING.value,
                                     DeploymentStatus.STARTING.value):
                continue
            if isinstance(dep["metrics"].get("equity"), int | float):
                equity.add_metric([dep["trial"]], float(dep["metrics"]["equity"]))
            if dep["last_heartbeat"] is not None:
                age.add_metric([dep["trial"]], max(0.0, now - dep["last_heartbeat"]))
        yield equity
        yield age

    def _daemon(self, store: Store, config: Config, now: float) -> Iterator[Metric]:
        loop = loop_metrics(store)
        yield GaugeMetricFamily(f"{P}_discovery_poll_seconds", "Duration of the last discovery "
                                "poll.", value=loop.get("last_poll_seconds") or 0.0)
        yield GaugeMetricFamily(f"{P}_discovery_poll_new_trials", "New trials in the last poll.",
                                value=loop.get("last_poll_new") or 0)
        yield GaugeMetricFamily(f"{P}_loop_lag_seconds", "Worst lateness of a loop turn since "
                                "the last health check.", value=loop.get("loop_lag_seconds") or 0)
        components = store.health()
        daemon = components.get("daemon")
        yield GaugeMetricFamily(f"{P}_last_heartbeat_timestamp_seconds", "Unix time of the "
                                "daemon's last heartbeat.",
                                value=daemon["checked_at"] if daemon else 0.0)
        state = pipeline_health(components, config, now, None,
                                unwritable(components, config, now), daemon_alive(config))
        healthy = GaugeMetricFamily(f"{P}_health", "1 for the pipeline's current state.",
                                    labels=["state"])
        for name in ("healthy", "degraded", "down"):
            healthy.add_metric([name], 1.0 if state == name else 0.0)
        yield healthy
        ok = GaugeMetricFamily(f"{P}_component_ok", "1 when a component is ok.",
                               labels=["component"])
        for name, comp in components.items():
            ok.add_metric([name], 1.0 if comp["status"] in ("ok", "running") else 0.0)
        yield ok


def registry_for(collector: PipelineCollector) -> CollectorRegistry:
    """A private registry holding only the pipeline's collector (no process defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
