"""/metrics, /healthz, /readyz and the metric names (Prometheus conventions, epnas_ namespace)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

from controller import http
from controller.metrics import Metrics


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_endpoints_and_metric_names() -> None:
    metrics = Metrics()
    ready, stalled = threading.Event(), threading.Event()
    server = http.serve(port=0, metrics=metrics, ready=lambda: (ready.is_set(), "ok: leader" if ready.is_set() else "not ready: no list yet"),
                        health=lambda: (not stalled.is_set(), "watch stalled" if stalled.is_set() else "ok"), host="127.0.0.1")
    port = server.server_address[1]
    try:
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz") == (503, "not ready: no list yet\n")
        ready.set()
        assert get(port, "/readyz") == (200, "ok: leader\n")
        stalled.set()
        assert get(port, "/healthz") == (503, "watch stalled\n")
        assert get(port, "/nope")[0] == 404
        metrics.child_ended(search="s", status="succeeded", seconds=3.0)
        metrics.step_done(search="s", summary={"best": {"reward": 0.5, "valAccuracy": 0.75}, "children": {"succeeded": 3, "cached": 1, "failed": 1},
                                               "feasibleCount": 2, "episode": 1, "step": 2})
        metrics.policy_updated(search="s", update={"loss": -0.25, "entropy": 4.0, "grad_norm": 1.0})
        metrics.api_errors.labels(verb="create").inc()
        metrics.store_errors.labels(op="open").inc()
        metrics.leader.set(1)
        metrics.search_retries.labels(reason="kubernetes").inc()
        code, text = get(port, "/metrics")
    finally:
        server.shutdown()
    assert code == 200
    for line in ('epnas_children_total{search="s",status="succeeded"} 1.0', 'epnas_child_duration_seconds_count{search="s"} 1.0',
                 'epnas_best_reward{search="s"} 0.5', 'epnas_best_accuracy{search="s"} 0.75', 'epnas_feasible_ratio{search="s"} 0.5',
                 'epnas_policy_loss{search="s"} -0.25', 'epnas_policy_entropy{search="s"} 4.0', 'epnas_episode{search="s"} 1.0',
                 'epnas_step{search="s"} 2.0', "epnas_searches_running 0.0", 'epnas_kubernetes_api_errors_total{verb="create"} 1.0',
                 'epnas_store_errors_total{op="open"} 1.0', "epnas_controller_leader 1.0",
                 'epnas_search_retries_total{reason="kubernetes"} 1.0'):
        assert line in text, line
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert all(name.startswith("epnas_") for name in names)
    metrics.forget(search="s")
    assert metrics.registry.get_sample_value("epnas_best_reward", {"search": "s"}) is None
    assert metrics.registry.get_sample_value("epnas_children_total", {"search": "s", "status": "succeeded"}) == 1.0
