"""/metrics, /healthz, /readyz and the metric names (Prometheus conventions, epnas_ namespace)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

from prometheus_client import generate_latest

from controller import http
from controller.metrics import ControllerMetrics


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_endpoints_and_metric_names() -> None:
    metrics = ControllerMetrics()
    ready, stalled = threading.Event(), threading.Event()
    server = http.serve(
        port=0,
        metrics=metrics,
        ready=lambda: (ready.is_set(), "ok: leader" if ready.is_set() else "not ready: no list yet"),
        health=lambda: (not stalled.is_set(), "watch stalled" if stalled.is_set() else "ok"),
        host="127.0.0.1",
    )
    port = server.server_address[1]
    try:
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz") == (503, "not ready: no list yet\n")
        ready.set()
        assert get(port, "/readyz") == (200, "ok: leader\n")
        stalled.set()
        assert get(port, "/healthz") == (503, "watch stalled\n")
        assert get(port, "/nope")[0] == 404
        metrics.children.labels(namespace="n", search="s", status="succeeded").inc()
        metrics.child_duration.labels(namespace="n", search="s").observe(3.0)
        metrics.children.labels(namespace="other", search="s", status="failed").inc()
        metrics.step_done(
            namespace="n",
            search="s",
            summary={
                "best": {"reward": 0.5, "valAccuracy": 0.75},
                "children": {"succeeded": 3, "cached": 1, "failed": 1},
                "feasibleCount": 2,
                "episode": 1,
                "step": 2,
            },
        )
        metrics.policy_updated(namespace="n", search="s", update={"loss": -0.25, "entropy": 4.0, "grad_norm": 1.0})
        metrics.api_errors.labels(verb="create").inc()
        metrics.store_errors.labels(op="open").inc()
        metrics.leader.set(1)
        metrics.search_retries.labels(reason="kubernetes").inc()
        code, text = get(port, "/metrics")
    finally:
        server.shutdown()
    assert code == 200
    n = 'namespace="n",search="s"'
    for line in (
        f'epnas_children_total{{{n},status="succeeded"}} 1.0',
        f"epnas_child_duration_seconds_count{{{n}}} 1.0",
        f"epnas_best_reward{{{n}}} 0.5",
        f"epnas_best_accuracy{{{n}}} 0.75",
        f"epnas_feasible_ratio{{{n}}} 0.5",
        f"epnas_policy_loss{{{n}}} -0.25",
        f"epnas_policy_entropy{{{n}}} 4.0",
        f"epnas_episode{{{n}}} 1.0",
        f"epnas_step{{{n}}} 2.0",
        'epnas_children_total{namespace="other",search="s",status="failed"} 1.0',
        "epnas_searches_running 0.0",
        'epnas_kubernetes_api_errors_total{verb="create"} 1.0',
        'epnas_store_errors_total{op="open"} 1.0',
        "epnas_controller_leader 1.0",
        'epnas_search_retries_total{reason="kubernetes"} 1.0',
    ):
        assert line in text, line
    # error counters are there at 0 before any error, for every verb the code uses
    from controller.rbac import code_uses

    for verb in {u.verb for u in code_uses()}:
        assert f'epnas_kubernetes_api_errors_total{{verb="{verb}"}}' in text, verb
    assert 'epnas_store_errors_total{op="loop"} 0.0' in text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert all(name.startswith("epnas_") for name in names)
    metrics.forget(namespace="n", search="s")
    left = generate_latest(metrics.registry).decode()
    assert 'namespace="n"' not in left  # every series of the deleted search, counters and histogram included
    assert (
        'epnas_children_total{namespace="other",search="s",status="failed"} 1.0' in left
    )  # its namesake elsewhere stays
