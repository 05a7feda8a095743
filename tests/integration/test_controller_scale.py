"""Scale: one step of 64 children against the real kube-apiserver, the JobExecutor in process.

The pods stay Pending (a node selector no node has), so only the controller's side is measured:
how fast the 64 Jobs exist, and how many API requests it makes per child (counted by wrapping
``ApiClient.call_api``).  Deleting the search (the garbage collector deletes the Jobs) must stop
the executor's wait promptly: the wait's stop condition is the search's absence on the API server,
so nothing but the delete stops it (a Job DELETED event from the garbage collector, or the end of a
10 s watch window, wakes it to check).  Numbers go to docs/benchmarks.md ("## Controller (issue 6)").
"""

from __future__ import annotations

import collections
import pathlib
import threading
import time

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from controller.jobs import JobExecutor, Owner, step_selector
from controller.kube import Kube
from epnas.executors.base import ChildRun
from epnas.search import SearchStopped
from epnas.spec import SearchSpec

REPO = pathlib.Path(__file__).resolve().parents[2]
BRANCHES = 64


@pytest.fixture(scope="module")
def crd(control_plane):
    control_plane.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crd.yaml"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/architecturesearches.epnas.io")


def counting_client(control_plane) -> tuple[k8s_client.ApiClient, list[tuple[str, str, float]]]:
    api_client = control_plane.api_client()
    api_client.configuration.connection_pool_maxsize = 32
    api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
    calls: list[tuple[str, str, float]] = []
    original = api_client.call_api

    def call_api(resource_path, method, *args, **kwargs):
        calls.append((method, resource_path, time.monotonic()))
        return original(resource_path, method, *args, **kwargs)

    api_client.call_api = call_api
    return api_client, calls


def test_64_jobs_of_one_step(control_plane, node_agent, namespace, crd):
    custom = k8s_client.CustomObjectsApi(control_plane.api_client())
    cr = custom.create_namespaced_custom_object(
        "epnas.io",
        "v1alpha1",
        namespace,
        "architecturesearches",
        {
            "apiVersion": "epnas.io/v1alpha1",
            "kind": "ArchitectureSearch",
            "metadata": {"name": "wide"},
            "spec": {"budget": {"episodes": 1, "branches": BRANCHES}},
        },
    )
    spec = SearchSpec.model_validate(
        {
            "trainer": {
                "image": "epnas/trainer:test",
                "gpu": 0,
                "cpu": "10m",
                "memory": "64Mi",
                "nodeSelector": {"epnas.io/pool": "nowhere"},
            }
        }
    )
    api_client, calls = counting_client(control_plane)
    errors = collections.Counter()

    def search_gone() -> bool:
        """The executor's stop condition: the search no longer exists (the controller learns it from its
        watch; here it is read from the API server, so only the delete itself can stop the wait)."""
        try:
            custom.get_namespaced_custom_object("epnas.io", "v1alpha1", namespace, "architecturesearches", "wide")
        except ApiException as err:
            return err.status == 404
        return False

    executor = JobExecutor(
        kube=Kube(api_client, on_error=lambda verb: errors.update([verb])),
        spec=spec,
        owner=Owner("wide", namespace, cr["metadata"]["uid"]),
        parallelism=lambda: None,
        should_stop=search_gone,
        on_finished=lambda outcome: None,
    )
    runs = [
        ChildRun(
            search="wide",
            child=f"e000-s00-c{i:02d}",
            arch_uri=f"s3://b/wide/children/e000-s00-c{i:02d}/arch.json",
            out_uri=f"s3://b/wide/children/e000-s00-c{i:02d}",
            weights_uri=None,
            timeout_s=60,
            episode=0,
            step=0,
            index=i,
        )
        for i in range(BRANCHES)
    ]
    raised: list[BaseException] = []

    def submit() -> None:
        try:
            executor.submit(runs)
        except BaseException as err:  # noqa: BLE001 (reported below)
            raised.append(err)

    started = time.monotonic()
    thread = threading.Thread(target=submit)
    thread.start()
    batch = k8s_client.BatchV1Api(control_plane.api_client())
    while len(batch.list_namespaced_job(namespace, label_selector=step_selector("wide", 0, 0)).items) < BRANCHES:
        assert time.monotonic() - started < 30 and thread.is_alive(), raised
        time.sleep(0.1)
    posts = [t for method, path, t in calls if method == "POST"]
    created_s = max(posts) - started
    time.sleep(3)  # the wait is watching now; count what a step costs while nothing happens
    requests = len(calls)
    by_kind = collections.Counter(f"{method} {path.rsplit('/', 1)[-1]}" for method, path, _ in calls)

    deleted = time.monotonic()
    custom.delete_namespaced_custom_object("epnas.io", "v1alpha1", namespace, "architecturesearches", "wide")
    thread.join(timeout=30)
    stopped_s = time.monotonic() - deleted
    assert not thread.is_alive() and raised and isinstance(raised[0], SearchStopped), raised
    print(
        f"\nscale: {BRANCHES} Jobs created in {created_s:.2f} s ({BRANCHES / created_s:.0f} Jobs/s); "
        f"{requests} requests = {requests / BRANCHES:.2f} per child per step {dict(by_kind)}; "
        f"wait stopped {stopped_s:.2f} s after the delete; errors {dict(errors)}"
    )
    assert created_s < 10
    assert len(posts) == BRANCHES and requests <= BRANCHES + 4 and not errors
    assert stopped_s < 12  # at most one 10 s watch window after the delete
