"""Kueue admits a search's children against a ClusterQueue's quota (issue 13 item 1), on the real
control plane with the real Kueue manager (harness/kueue.py; its webhooks registered).

The ClusterQueue's cpu and memory quota fits 2 children; the search's step has 4 and no
``spec.parallelism``, so the controller creates all 4 Jobs at once, suspended with the queue label
(``spec.trainer.queueName``), and Kueue lets 2 run at a time. Polled every 0.1 s: the search's
unsuspended unfinished Jobs, and its admitted unfinished Workloads.
"""

from __future__ import annotations

import time

from e2e_helpers import read_search, search_jobs
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
QUEUE = "children"
CHILD_CPU, CHILD_MEMORY = "100m", "512Mi"  # search_yaml's trainer requests
QUOTA_CHILDREN = 2


def _finished(job) -> bool:
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or [])


def _condition(workload: dict, kind: str) -> bool:
    return any(
        c["type"] == kind and c["status"] == "True" for c in (workload.get("status") or {}).get("conditions") or []
    )


def _job_of(workload: dict) -> str | None:
    owners = [o for o in workload["metadata"].get("ownerReferences") or [] if o.get("kind") == "Job"]
    return owners[0]["name"] if owners else None


def _queue_objects(namespace: str) -> list[tuple[str, str, dict]]:
    flavor, cluster_queue = f"{namespace}-flavor", f"{namespace}-cq"
    return [
        (
            "resourceflavors",
            "",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": flavor}},
        ),
        (
            "clusterqueues",
            "",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ClusterQueue",
                "metadata": {"name": cluster_queue},
                "spec": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory"],
                            "flavors": [
                                {
                                    "name": flavor,
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": f"{QUOTA_CHILDREN * 100}m"},
                                        {"name": "memory", "nominalQuota": f"{QUOTA_CHILDREN * 512}Mi"},
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
        ),
        (
            "localqueues",
            namespace,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "LocalQueue",
                "metadata": {"name": QUEUE, "namespace": namespace},
                "spec": {"clusterQueue": cluster_queue},
            },
        ),
    ]


def _create(custom, plural: str, namespace: str, body: dict) -> None:
    if namespace:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    else:
        custom.create_cluster_custom_object(GROUP, VERSION, plural, body)


def _wait_cluster_queue_active(custom, name: str, *, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        queue = custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", name)
        if _condition(queue, "Active"):
            return
        assert time.monotonic() < deadline, f"ClusterQueue {name} not Active: {queue.get('status')}"
        time.sleep(0.2)


def test_kueue_admits_the_children_against_the_cluster_queues_quota(
    control_plane, kueue, node_agent, minio, bucket, namespace, search_yaml, start_controller
):
    api = control_plane.api_client()
    custom = k8s_client.CustomObjectsApi(api)
    batch = k8s_client.BatchV1Api(api)
    objects = _queue_objects(namespace)
    for plural, ns, body in objects:
        _create(custom, plural, ns, body)
    try:
        _wait_cluster_queue_active(custom, f"{namespace}-cq")
        ctl = start_controller(namespace)
        budget = {"episodes": 1, "stepsPerEpisode": 1, "branches": 4, "topK": 4}
        control_plane.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input_text=search_yaml("queued", bucket, budget=budget, trainer={"queueName": QUEUE}),
        )

        most_running = most_admitted = queued_moments = polls = 0
        admitted_ever: set[str] = set()
        seen_suspended: set[str] = set()
        deadline = time.monotonic() + 600
        while read_search(control_plane, namespace, "queued").get("status", {}).get("phase") not in (
            "Succeeded",
            "Failed",
        ):
            assert time.monotonic() < deadline and ctl.proc.poll() is None, ctl.output()[-3000:]
            jobs = batch.list_namespaced_job(namespace, label_selector="epnas.io/search=queued").items
            workloads = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]
            unfinished = [j for j in jobs if not _finished(j)]
            running = [j for j in unfinished if not j.spec.suspend]
            suspended = [j for j in unfinished if j.spec.suspend]
            seen_suspended |= {j.metadata.name for j in suspended}
            admitted = [w for w in workloads if _condition(w, "Admitted") and not _condition(w, "Finished")]
            admitted_ever |= {_job_of(w) for w in workloads if _condition(w, "Admitted")}
            most_running, most_admitted = max(most_running, len(running)), max(most_admitted, len(admitted))
            queued_moments += bool(running and suspended)
            polls += 1
            time.sleep(0.1)

        obj = read_search(control_plane, namespace, "queued")
        assert obj["status"]["phase"] == "Succeeded", (obj["status"], ctl.output()[-3000:])
        assert sum(obj["status"]["children"].values()) == 4, obj["status"]
        jobs = {j.metadata.name: j for j in search_jobs(control_plane, namespace, "queued")}
        trained = 4 - obj["status"]["children"].get("cached", 0)
        assert len(jobs) == trained >= 3, sorted(jobs)
        for job in jobs.values():  # each was the controller's: queue label, and finished after Kueue let it run
            assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == QUEUE and job.spec.suspend is False
            assert _finished(job)
        workloads = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]
        by_job = {_job_of(w): w for w in workloads}
        assert set(by_job) == set(jobs), (sorted(by_job), sorted(jobs))
        admitted_ever |= {name for name, w in by_job.items() if _condition(w, "Admitted")}
        assert admitted_ever >= set(jobs), f"never seen Admitted: {sorted(set(jobs) - admitted_ever)}"
        for name, workload in by_job.items():  # admitted by our ClusterQueue, then finished
            assert _condition(workload, "Finished"), (name, workload.get("status"))
        # never more than the quota's worth at once, and the rest waited suspended meanwhile
        assert 1 <= most_running <= QUOTA_CHILDREN and most_admitted <= QUOTA_CHILDREN, (most_running, most_admitted)
        assert queued_moments > 0 and seen_suspended, "no moment had a Job waiting suspended while another ran"
        print(
            f"kueue: {polls} polls, at most {most_running} Jobs running and {most_admitted} Workloads admitted at once; "
            f"{queued_moments} polls saw a Job queued while others ran; waited suspended: {sorted(seen_suspended)}"
        )
    finally:
        for plural, ns, body in reversed(objects):
            try:
                if ns:
                    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, plural, body["metadata"]["name"])
                else:
                    custom.delete_cluster_custom_object(GROUP, VERSION, plural, body["metadata"]["name"])
            except ApiException as error:
                if error.status != 404:
                    raise
