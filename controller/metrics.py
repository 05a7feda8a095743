"""Every Prometheus metric of the controller, ``epnas_`` namespace, base units.

One ``ControllerMetrics`` object per process holds its own ``CollectorRegistry`` (no module globals),
served by ``controller.http``.

==================================  =========  ==================  ==========================================
name                                type       labels              meaning
==================================  =========  ==================  ==========================================
epnas_children_total                counter    NS, search, status  children ended (succeeded, failed, cached)
epnas_child_duration_seconds        histogram  NS, search          a child's Job, start to end
epnas_best_reward                   gauge      NS, search          best reward so far
epnas_best_accuracy                 gauge      NS, search          validation accuracy of the best child
epnas_feasible_ratio                gauge      NS, search          feasible / evaluated children
epnas_policy_loss                   gauge      NS, search          REINFORCE loss of the last update
epnas_policy_entropy                gauge      NS, search          mean policy entropy of the last update
epnas_episode                       gauge      NS, search          current episode (0-based)
epnas_step                          gauge      NS, search          steps done in the current episode
epnas_searches_running              gauge                          search loops running in this controller
epnas_controller_leader             gauge                          1 while this replica holds the leader Lease
epnas_search_retries_total          counter    reason              searches resumed after a transient error
epnas_kubernetes_api_errors_total   counter    verb                failed Kubernetes API calls
epnas_store_errors_total            counter    op                  failed store operations
==================================  =========  ==================  ==========================================

NS is the ``namespace`` label: two searches of one name in two namespaces are two series.
A deleted search's series are all removed (``forget``), counters and histogram included, so a
long-running controller does not accumulate series of searches that no longer exist.
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.rbac import code_uses
from epnas.records import ChildStatus, SearchSummary

DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
PER_SEARCH = (
    "best_reward",
    "best_accuracy",
    "feasible_ratio",
    "policy_loss",
    "policy_entropy",
    "episode",
    "step",
    "child_duration",
)
CHILD_STATUSES: tuple[ChildStatus, ...] = get_args(ChildStatus)
# every verb controller.kube's calls use (read from its source, as the RBAC rules are): each gets
# its error series at 0 from the start
API_VERBS = tuple(
    v for v in ("get", "list", "watch", "create", "update", "patch", "delete") if v in {u.verb for u in code_uses()}
)
STORE_OPS = ("open", "loop")


class ControllerMetrics:
    """The controller's Prometheus series (the table above), in a registry of its own; not the
    architecture metrics of ``epnas.metrics.Metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.children = Counter(
            "epnas_children_total",
            "Children ended, by status (succeeded, failed, cached).",
            ["namespace", "search", "status"],
            registry=r,
        )
        self.child_duration = Histogram(
            "epnas_child_duration_seconds",
            "Duration of a child's Job from start to end.",
            ["namespace", "search"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.best_reward = Gauge("epnas_best_reward", "Best reward so far.", ["namespace", "search"], registry=r)
        self.best_accuracy = Gauge(
            "epnas_best_accuracy", "Validation accuracy of the best child so far.", ["namespace", "search"], registry=r
        )
        self.feasible_ratio = Gauge(
            "epnas_feasible_ratio", "Feasible children / evaluated children.", ["namespace", "search"], registry=r
        )
        self.policy_loss = Gauge(
            "epnas_policy_loss", "REINFORCE loss of the last policy update.", ["namespace", "search"], registry=r
        )
        self.policy_entropy = Gauge(
            "epnas_policy_entropy",
            "Mean policy entropy of the last policy update.",
            ["namespace", "search"],
            registry=r,
        )
        self.episode = Gauge("epnas_episode", "Current episode (0-based).", ["namespace", "search"], registry=r)
        self.step = Gauge("epnas_step", "Steps done in the current episode.", ["namespace", "search"], registry=r)
        self.searches_running = Gauge("epnas_searches_running", "Search loops running in this controller.", registry=r)
        self.leader = Gauge(
            "epnas_controller_leader", "1 while this replica holds the leader Lease, else 0.", registry=r
        )
        self.search_retries = Counter(
            "epnas_search_retries_total", "Searches resumed after a transient error, by reason.", ["reason"], registry=r
        )
        self.api_errors = Counter(
            "epnas_kubernetes_api_errors_total", "Failed Kubernetes API calls, by verb.", ["verb"], registry=r
        )
        self.store_errors = Counter(
            "epnas_store_errors_total", "Failed store operations, by operation.", ["op"], registry=r
        )
        # error counters exist at 0 from the start, so rate() and the dashboard's panels have a series
        # before the first error (Prometheus' advice for labelled counters whose labels are known)
        for verb in API_VERBS:
            self.api_errors.labels(verb=verb)
        for op in STORE_OPS:
            self.store_errors.labels(op=op)

    def step_done(self, *, namespace: str, search: str, summary: SearchSummary) -> None:
        """Gauges from a loop summary (``epnas.search.summarize``)."""
        best = summary.get("best")
        counts = summary["children"]
        evaluated = counts["succeeded"] + counts["cached"]
        labels = {"namespace": namespace, "search": search}
        self.best_reward.labels(**labels).set(best["reward"] if best else 0.0)
        self.best_accuracy.labels(**labels).set(best["valAccuracy"] if best else 0.0)
        self.feasible_ratio.labels(**labels).set(summary["feasibleCount"] / evaluated if evaluated else 0.0)
        self.episode.labels(**labels).set(summary["episode"])
        self.step.labels(**labels).set(summary["step"])

    def policy_updated(self, *, namespace: str, search: str, update: dict) -> None:
        if "loss" in update:
            self.policy_loss.labels(namespace=namespace, search=search).set(float(update["loss"]))
        if "entropy" in update:
            self.policy_entropy.labels(namespace=namespace, search=search).set(float(update["entropy"]))

    def forget(self, *, namespace: str, search: str) -> None:
        """Drop every series of a deleted search."""
        for name in PER_SEARCH:
            try:
                getattr(self, name).remove(namespace, search)
            except KeyError:
                pass
        for status in CHILD_STATUSES:
            try:
                self.children.remove(namespace, search, status)
            except KeyError:
                pass
