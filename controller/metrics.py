"""Every Prometheus metric of the controller, ``epnas_`` namespace, base units.

One ``Metrics`` object per process holds its own ``CollectorRegistry`` (no module globals),
served by ``controller.http``.

==================================  =========  ==================  ==========================================
name                                type       labels              meaning
==================================  =========  ==================  ==========================================
epnas_children_total                counter    search, status      children ended (succeeded, failed, cached)
epnas_child_duration_seconds        histogram  search              a child's Job, start to end
epnas_best_reward                   gauge      search              best reward so far
epnas_best_accuracy                 gauge      search              validation accuracy of the best child
epnas_feasible_ratio                gauge      search              feasible / evaluated children
epnas_policy_loss                   gauge      search              REINFORCE loss of the last update
epnas_policy_entropy                gauge      search              mean policy entropy of the last update
epnas_episode                       gauge      search              current episode (0-based)
epnas_step                          gauge      search              steps done in the current episode
epnas_searches_running              gauge                          search loops running in this controller
epnas_controller_leader             gauge                          1 while this replica holds the leader Lease
epnas_search_retries_total          counter    reason              searches resumed after a transient error
epnas_kubernetes_api_errors_total   counter    verb                failed Kubernetes API calls
epnas_store_errors_total            counter    op                  failed store operations
==================================  =========  ==================  ==========================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
PER_SEARCH = ("best_reward", "best_accuracy", "feasible_ratio", "policy_loss", "policy_entropy", "episode", "step")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.children = Counter("epnas_children_total", "Children ended, by status (succeeded, failed, cached).", ["search", "status"], registry=r)
        self.child_duration = Histogram("epnas_child_duration_seconds", "Duration of a child's Job from start to end.", ["search"], buckets=DURATION_BUCKETS, registry=r)
        self.best_reward = Gauge("epnas_best_reward", "Best reward so far.", ["search"], registry=r)
        self.best_accuracy = Gauge("epnas_best_accuracy", "Validation accuracy of the best child so far.", ["search"], registry=r)
        self.feasible_ratio = Gauge("epnas_feasible_ratio", "Feasible children / evaluated children.", ["search"], registry=r)
        self.policy_loss = Gauge("epnas_policy_loss", "REINFORCE loss of the last policy update.", ["search"], registry=r)
        self.policy_entropy = Gauge("epnas_policy_entropy", "Mean policy entropy of the last policy update.", ["search"], registry=r)
        self.episode = Gauge("epnas_episode", "Current episode (0-based).", ["search"], registry=r)
        self.step = Gauge("epnas_step", "Steps done in the current episode.", ["search"], registry=r)
        self.searches_running = Gauge("epnas_searches_running", "Search loops running in this controller.", registry=r)
        self.leader = Gauge("epnas_controller_leader", "1 while this replica holds the leader Lease, else 0.", registry=r)
        self.search_retries = Counter("epnas_search_retries_total", "Searches resumed after a transient error, by reason.", ["reason"], registry=r)
        self.api_errors = Counter("epnas_kubernetes_api_errors_total", "Failed Kubernetes API calls, by verb.", ["verb"], registry=r)
        self.store_errors = Counter("epnas_store_errors_total", "Failed store operations, by operation.", ["op"], registry=r)

    def child_ended(self, *, search: str, status: str, seconds: float | None) -> None:
        self.children.labels(search=search, status=status).inc()
        if seconds is not None:
            self.child_duration.labels(search=search).observe(seconds)

    def step_done(self, *, search: str, summary: dict) -> None:
        """Gauges from a loop summary (``epnas.search.summarize``)."""
        best = summary.get("best") or {}
        counts = summary["children"]
        evaluated = counts["succeeded"] + counts["cached"]
        self.best_reward.labels(search=search).set(best.get("reward", 0.0))
        self.best_accuracy.labels(search=search).set(best.get("valAccuracy", 0.0))
        self.feasible_ratio.labels(search=search).set(summary["feasibleCount"] / evaluated if evaluated else 0.0)
        self.episode.labels(search=search).set(summary["episode"])
        self.step.labels(search=search).set(summary["step"])

    def policy_updated(self, *, search: str, update: dict) -> None:
        if "loss" in update:
            self.policy_loss.labels(search=search).set(float(update["loss"]))
        if "entropy" in update:
            self.policy_entropy.labels(search=search).set(float(update["entropy"]))

    def forget(self, *, search: str) -> None:
        """Drop a deleted search's series."""
        for name in PER_SEARCH:
            gauge = getattr(self, name)
            try:
                gauge.remove(search)
            except KeyError:
                pass
