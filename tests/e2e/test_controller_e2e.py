"""A user's path: apply the CRD, run the controller, ``kubectl apply`` a search, watch it succeed.

The controller runs as a subprocess (``python -m controller --namespace NS``) with the test
kubeconfig; children run as real Jobs (the kube-controller-manager's Job controller makes the
pods, the node agent runs them as local processes); results and weights go to MinIO.
"""

from __future__ import annotations

import json
import re
import time

from e2e_helpers import events_of, s3_keys, search_jobs, wait_for_phase

CHILDREN = 12  # 2 episodes × 2 steps × 3 branches


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_search_runs_to_success_as_jobs(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, job_log
):
    jobs_seen = job_log(namespace)
    started = time.monotonic()
    ctl = start_controller(namespace)
    deadline = time.monotonic() + 60
    while ctl.get("/readyz")[0] != 200:
        assert time.monotonic() < deadline, ctl.output()
        time.sleep(0.3)
    assert ctl.get("/healthz")[0] == 200
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("tiny", bucket))

    counted_while_running = 0.0
    deadline = time.monotonic() + 900
    while True:
        obj = wait_for_phase(
            control_plane, namespace, "tiny", ("Running", "Succeeded", "Failed"), timeout_s=120, proc=ctl
        )
        if obj["status"]["phase"] != "Running":
            break
        counted_while_running = max(
            counted_while_running, metric(ctl.get("/metrics")[1], "epnas_children_total", search="tiny")
        )
        assert time.monotonic() < deadline, "search did not finish"
        time.sleep(2)
    elapsed = time.monotonic() - started
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    print(f"e2e: {CHILDREN} children in {elapsed:.0f} s")

    # status: progress, best architecture, counts, conditions
    counts = status["children"]
    assert counts["succeeded"] + counts["cached"] + counts["failed"] == CHILDREN and counts["failed"] == 0
    assert (
        status["bestHash"]
        and status["bestArchitecture"].startswith(("conv", "sep", "dep", "max", "avg", "dense"))
        and 0 < status["bestAccuracy"] <= 1
    )
    assert "bestReward" in status and status["feasibleCount"] >= 1 and "bestFeasibleAccuracy" in status
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True" and conditions["Running"]["status"] == "False"
    assert all(c["reason"] and c["message"] and c["lastTransitionTime"] for c in conditions.values())

    # one Job per trained child, made into pods by the real Job controller, owned by the CR
    jobs = search_jobs(control_plane, namespace, "tiny")
    # A child whose architecture was evaluated before is "cached" by the loop (its result
    # copied, no Job): Jobs = 12 children - cached ones.
    trained = counts["succeeded"]
    assert len(jobs) == len(jobs_seen.uids) == trained == CHILDREN - counts["cached"], jobs_seen.names()
    print(f"e2e: {len(jobs)} Jobs for {CHILDREN} children ({counts['cached']} cached)")
    for job in jobs:
        assert job.status.succeeded == 1 and any(
            c.type == "Complete" and c.status == "True" for c in job.status.conditions
        )
        (owner,) = job.metadata.owner_references
        assert owner.kind == "ArchitectureSearch" and owner.uid == obj["metadata"]["uid"] and owner.controller
        assert re.fullmatch(r"tiny-e00[01]-s0[01]-c0[0-2]", job.metadata.name)

    # every child's result and the shared weights are in MinIO
    # (at searches/<namespace>/<name>/<uid>/: namespaces sharing a store never collide)
    prefix = f"searches/{namespace}/tiny/{obj['metadata']['uid']}/"
    assert status["store"] == f"s3://{bucket}/{prefix}".rstrip("/")
    keys = s3_keys(minio, bucket, prefix)
    results = [k for k in keys if k.endswith("/result.json")]
    assert len(results) == CHILDREN
    assert f"{prefix}weights/index.json" in keys and f"{prefix}search.yaml" in keys
    assert any(k.startswith(f"{prefix}weights/") and k.endswith(".safetensors") for k in keys)

    # metrics counted the children while the search ran, and all of them at the end
    assert counted_while_running >= 3
    text = ctl.get("/metrics")[1]
    assert metric(text, "epnas_children_total", search="tiny") == CHILDREN
    assert metric(text, "epnas_child_duration_seconds_count", search="tiny") == trained
    assert (
        round(metric(text, "epnas_best_accuracy", search="tiny"), 4) == status["bestAccuracy"]
    )  # the status rounds to 4 decimals
    assert "epnas_policy_loss{" in text and "epnas_policy_entropy{" in text and "epnas_searches_running 0.0" in text

    # kubectl get nas: the printer columns
    table = control_plane.kubectl("get", "nas", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "CHILDREN", "BEST-ACC", "FEASIBLE", "REASON", "AGE"]
    row = table[1].split()
    assert row[:3] == ["tiny", "Succeeded", f"{CHILDREN}/{CHILDREN}"] and row[5] == "Completed", table
    assert float(row[3]) == status["bestFeasibleAccuracy"] == round(status["bestFeasibleAccuracy"], 4)  # BEST-ACC
    wide = control_plane.kubectl("get", "nas", "-n", namespace, "-o", "wide").stdout
    assert "finished after 2 episodes" in wide, wide  # POSITION, in `epnas status`'s words
    assert status["startTime"] <= status["completionTime"] and status["reason"] == "Completed"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Running": "False",
        "Succeeded": "True",
        "NoFeasibleChild": "False",
    }
    described = control_plane.kubectl("describe", "nas", "tiny", "-n", namespace).stdout
    # describe shows the one-line architecture whole (kubectl may pad the key differently)
    line = next(x for x in described.splitlines() if x.strip().startswith("Best Architecture:"))
    assert line.split(":", 1)[1].strip() == status["bestArchitecture"] and "→" in status["bestArchitecture"], line

    # Events on the object
    reasons = [e.reason for e in events_of(control_plane, namespace, "tiny")]
    assert {"Started", "StepCompleted", "Succeeded"} <= set(reasons) and reasons.count("StepCompleted") == 4

    # no credentials anywhere a user can read
    secret = minio.root_password
    for text in (
        ctl.output(),
        control_plane.kubectl("get", "nas,jobs,pods,events", "-n", namespace, "-o", "json").stdout,
    ):
        assert secret not in text


def test_final_training_runs_as_a_job_and_the_status_names_the_final_model(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller
):
    """``finalTraining`` on the cluster: the winner is trained again as one more Job owned by the
    search, its result and weights land under ``final/`` in MinIO, and ``status.finalModel`` names it."""
    ctl = start_controller(namespace)
    doc = search_yaml(
        "fin",
        bucket,
        budget={"episodes": 1, "stepsPerEpisode": 1, "branches": 2},
        finalTraining={"top": 1, "epochs": 2},
    )
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=doc)
    obj = wait_for_phase(control_plane, namespace, "fin", ("Succeeded", "Failed"), timeout_s=600, proc=ctl)
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    final = status["finalModel"]
    assert final["child"] == status["bestFeasibleChild"] and final["uri"].endswith(
        f"/fin/{obj['metadata']['uid']}/final/{final['child']}"
    )
    jobs = {j.metadata.name: j for j in search_jobs(control_plane, namespace, "fin")}
    job = jobs[f"fin-final-{final['child']}"]
    assert job.status.succeeded == 1 and job.metadata.owner_references[0].uid == obj["metadata"]["uid"]
    prefix = f"searches/{namespace}/fin/{obj['metadata']['uid']}/"
    keys = s3_keys(minio, bucket, f"{prefix}final/{final['child']}/")
    assert {k.rsplit("/", 1)[-1] for k in keys} == {"arch.json", "result.json", "weights.safetensors"}
    body = minio.s3_client().get_object(Bucket=bucket, Key=f"{prefix}final/{final['child']}/result.json")["Body"].read()
    result = json.loads(body)
    assert round(result["valAccuracy"], 4) == final["valAccuracy"] and result["epochsRun"] == 2  # status: 4 decimals
    assert result["weightsKey"] == f"final/{final['child']}/weights.safetensors"
