"""Deleting a running search stops its loop and the garbage collector removes its Jobs; two
searches in one namespace progress independently; spec changes after start are refused."""

from __future__ import annotations

import time

from e2e_helpers import events_of, read_search, search_jobs, wait_for_phase
from kubernetes import client as k8s_client


def wait_for_jobs(control_plane, namespace: str, name: str, ctl, *, timeout_s: float = 300) -> list:
    deadline = time.monotonic() + timeout_s
    while not (jobs := search_jobs(control_plane, namespace, name)):
        assert time.monotonic() < deadline and ctl.proc.poll() is None, ctl.output()[-3000:]
        time.sleep(0.2)
    return jobs


def test_deleting_a_running_search_stops_it_and_collects_its_jobs(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, job_log
):
    jobs_seen = job_log(namespace)
    ctl = start_controller(namespace)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("doomed", bucket))
    wait_for_jobs(control_plane, namespace, "doomed", ctl)
    wait_for_phase(control_plane, namespace, "doomed", ("Running",), timeout_s=60, proc=ctl)
    deleted = time.monotonic()
    control_plane.kubectl("delete", "nas", "doomed", "-n", namespace, "--wait=false")

    deadline = time.monotonic() + 30
    while "doomed deleted: loop stopped" not in ctl.output() or "doomed: stopped" not in ctl.output():
        assert time.monotonic() < deadline, ctl.output()[-3000:]
        time.sleep(0.1)
    stopped_s = time.monotonic() - deleted
    created = dict(jobs_seen.uids)
    # The real garbage collector deletes the Jobs; right after the CRD was installed its
    # resource monitors may need one discovery resync (30 s) first.
    deadline = time.monotonic() + 120
    while search_jobs(control_plane, namespace, "doomed"):
        assert time.monotonic() < deadline, "the garbage collector did not delete the Jobs"
        time.sleep(0.5)
    gc_s = time.monotonic() - deleted
    time.sleep(5)
    assert jobs_seen.uids == created, "a Job appeared after the search was deleted"
    assert len(created) <= 3  # only the first step's
    assert "epnas_searches_running 0.0" in ctl.get("/metrics")[1]
    print(f"deletion: Jobs collected in {gc_s:.1f} s, loop stopped {stopped_s:.1f} s after the delete")


def test_two_searches_progress_independently(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller
):
    ctl = start_controller(namespace)
    budget = {"episodes": 1, "stepsPerEpisode": 2, "branches": 2, "topK": 2}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("alpha", bucket, budget=budget))
    control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=search_yaml("beta", bucket, budget=budget, seed=9)
    )
    # both run at the same time: one list of the namespace's Jobs (one moment) holds unfinished
    # Jobs of both searches; polled every 0.1 s until both have ended
    batch = k8s_client.BatchV1Api(control_plane.api_client())
    overlaps, deadline = 0, time.monotonic() + 600
    while any(
        read_search(control_plane, namespace, n).get("status", {}).get("phase") not in ("Succeeded", "Failed")
        for n in ("alpha", "beta")
    ):
        assert time.monotonic() < deadline and ctl.proc.poll() is None, ctl.output()[-3000:]
        listed = batch.list_namespaced_job(namespace, label_selector="epnas.io/search in (alpha,beta)").items
        unfinished = {j.metadata.labels["epnas.io/search"] for j in listed if not _finished(j)}
        overlaps += unfinished == {"alpha", "beta"}
        time.sleep(0.1)
    assert overlaps > 0, "no moment had unfinished Jobs of both searches: they ran one after the other"
    print(f"two searches: {overlaps} polls saw unfinished Jobs of both")
    alpha = wait_for_phase(control_plane, namespace, "alpha", ("Succeeded", "Failed"), timeout_s=10, proc=ctl)
    beta = wait_for_phase(control_plane, namespace, "beta", ("Succeeded", "Failed"), timeout_s=10, proc=ctl)
    for obj in (alpha, beta):
        assert obj["status"]["phase"] == "Succeeded", obj["status"]
        assert sum(obj["status"]["children"].values()) == 4
    jobs = {name: search_jobs(control_plane, namespace, name) for name in ("alpha", "beta")}
    assert all(j.metadata.owner_references[0].name == name for name, js in jobs.items() for j in js)
    for obj in (alpha, beta):  # <uri>/<namespace>/<name>/<uid>
        meta = obj["metadata"]
        assert obj["status"]["store"] == f"s3://{bucket}/searches/{namespace}/{meta['name']}/{meta['uid']}"


def _finished(job) -> bool:
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or [])


def test_spec_change_after_start_is_refused_but_parallelism_is_live(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller
):
    ctl = start_controller(namespace)
    budget = {"episodes": 1, "stepsPerEpisode": 2, "branches": 2, "topK": 2}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("steady", bucket, budget=budget))
    wait_for_phase(control_plane, namespace, "steady", ("Running",), timeout_s=120, proc=ctl)
    control_plane.kubectl(
        "patch", "nas", "steady", "-n", namespace, "--type=merge", "-p", '{"spec": {"parallelism": 1}}'
    )
    deadline = time.monotonic() + 30
    while read_search(control_plane, namespace, "steady")["status"].get("observedGeneration") != 2:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    conditions = {c["type"]: c for c in read_search(control_plane, namespace, "steady")["status"]["conditions"]}
    assert conditions["SpecChangeRefused"]["status"] == "False"
    control_plane.kubectl(
        "patch",
        "nas",
        "steady",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"seed": 99, "budget": {"branches": 5}}}',
    )
    deadline = time.monotonic() + 30
    while True:
        status = read_search(control_plane, namespace, "steady")["status"]
        refused = {c["type"]: c for c in status["conditions"]}.get("SpecChangeRefused", {})
        if refused.get("status") == "True":
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert "budget" in refused["message"] and "seed" in refused["message"]
    # parallelism 1 is live: the next step's Jobs run one at a time (polled until the search ends)
    most_at_once, step1_jobs = 0, set()
    deadline = time.monotonic() + 600
    while read_search(control_plane, namespace, "steady")["status"].get("phase") not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline and ctl.proc.poll() is None, ctl.output()[-3000:]
        step1 = [
            j for j in search_jobs(control_plane, namespace, "steady") if j.metadata.labels["epnas.io/step"] == "1"
        ]
        step1_jobs |= {j.metadata.name for j in step1}
        running = [j for j in step1 if not _finished(j)]
        most_at_once = max(most_at_once, len(running))
        time.sleep(0.1)
    obj = read_search(control_plane, namespace, "steady")
    assert (
        obj["status"]["phase"] == "Succeeded" and sum(obj["status"]["children"].values()) == 4
    )  # the original 2 branches
    assert most_at_once == 1 and len(step1_jobs) == 2 - obj["status"]["children"]["cached"], (most_at_once, step1_jobs)


def test_semantic_errors_fail_the_search_and_the_controller_carries_on(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller
):
    ctl = start_controller(namespace)
    # min > max: the CRD's CEL rule refuses it at `kubectl apply`, naming the field
    bad_bounds = search_yaml("bounds", bucket, constraints=[{"metric": "modelSize", "min": 50000, "max": 20000}])
    refused = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=bad_bounds, check=False)
    assert (
        refused.returncode != 0
        and "spec.constraints[0]" in refused.stderr
        and "min must not be greater than max" in refused.stderr
    )
    only_max = search_yaml("onlymax", bucket, constraints=[{"metric": "modelSize", "max": 20000, "min": None}])
    assert (
        control_plane.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", "-", input_text=only_max, check=False
        ).returncode
        == 0
    )
    # what only the controller can check fails the search with the reason: a dataset without its uri
    bad_dataset = search_yaml("bounds", bucket, dataset={"kind": "npz", "inputShape": [1, 8, 8], "numClasses": 4})
    no_store = search_yaml("nostore", bucket, store={"uri": None})
    for doc in (bad_dataset, no_store):
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=doc)
    failed = {
        name: wait_for_phase(control_plane, namespace, name, ("Failed", "Succeeded"), timeout_s=60, proc=ctl)["status"]
        for name in ("bounds", "nostore")
    }
    assert (
        failed["bounds"]["phase"] == "Failed" and "dataset kind npz needs 'uri'" in _failed(failed["bounds"])["message"]
    )
    assert _failed(failed["bounds"])["reason"] == "InvalidSpec"
    assert failed["nostore"]["phase"] == "Failed" and _failed(failed["nostore"])["reason"] == "StoreMissing"
    budget = {"episodes": 1, "stepsPerEpisode": 1, "branches": 2, "topK": 2}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("fine", bucket, budget=budget))
    obj = wait_for_phase(control_plane, namespace, "fine", ("Succeeded", "Failed"), timeout_s=300, proc=ctl)
    assert obj["status"]["phase"] == "Succeeded"


def _failed(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Failed" and c["status"] == "True")


def test_more_episodes_extend_a_finished_search_and_other_edits_are_refused(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, job_log
):
    """``kubectl patch``/``apply`` of a Succeeded search with a larger ``budget.episodes`` continues it
    from its checkpoint (the same rule as ``epnas search`` locally): the first episode's Jobs are
    not run again; an edit of anything else is refused by name and the search stays as it was."""
    jobs_seen = job_log(namespace)
    ctl = start_controller(namespace)
    budget = {"episodes": 1, "stepsPerEpisode": 1, "branches": 2, "topK": 2}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("grow", bucket, budget=budget))
    first = wait_for_phase(control_plane, namespace, "grow", ("Succeeded", "Failed"), timeout_s=300, proc=ctl)["status"]
    assert first["phase"] == "Succeeded" and sum(first["children"].values()) == 2
    before = dict(jobs_seen.uids)

    control_plane.kubectl(
        "patch", "nas", "grow", "-n", namespace, "--type=merge", "-p", '{"spec": {"budget": {"episodes": 2}}}'
    )
    status = _ended_at_generation(control_plane, namespace, "grow", 2, ctl, timeout_s=300)
    assert status["phase"] == "Succeeded" and sum(status["children"].values()) == 4 and status["episode"] == 2, status
    names = list(jobs_seen.uids.values())
    assert len(names) == len(set(names)) and all(jobs_seen.uids.get(uid) == name for uid, name in before.items())
    assert any(n.startswith("grow-e001-") for n in names) and not any(n.startswith("grow-e002-") for n in names)
    assert "Extended" in [e.reason for e in events_of(control_plane, namespace, "grow")]

    control_plane.kubectl("patch", "nas", "grow", "-n", namespace, "--type=merge", "-p", '{"spec": {"seed": 77}}')
    status = _ended_at_generation(control_plane, namespace, "grow", 3, ctl, timeout_s=120)
    refused = {c["type"]: c for c in status["conditions"]}["SpecChangeRefused"]
    assert status["phase"] == "Succeeded" and refused["status"] == "True" and "spec.seed" in refused["message"]
    assert sum(status["children"].values()) == 4 and len(jobs_seen.uids) == len(names)


def _ended_at_generation(control_plane, namespace: str, name: str, generation: int, ctl, *, timeout_s: float) -> dict:
    """The status once the search observed ``generation`` and ended (Succeeded or Failed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = read_search(control_plane, namespace, name)["status"]
        if status.get("observedGeneration") == generation and status["phase"] in ("Succeeded", "Failed"):
            return status
        assert time.monotonic() < deadline and ctl.proc.poll() is None, (status, ctl.output()[-3000:])
        time.sleep(0.5)
