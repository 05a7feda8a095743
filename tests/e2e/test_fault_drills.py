"""Fault drills on the real control plane and MinIO: the controller SIGKILLed at a random
moment, MinIO stopped for a few seconds at a random moment of a step (while trainers pull
and push weights and write results, and the controller merges and checkpoints), and
kube-apiserver restarted mid-step (the controller's watches, the Job controller and the node
agent all lose the API server for a few seconds).

Every trial must end with the search Succeeded, every child's result in the store, no Job
ever created twice, and no corrupt object in the store (every JSON parses, every
safetensors object decodes).  ``make test`` runs one trial of each; ``bench/drills.py``
runs more (``EPNAS_DRILL_TRIALS``) and tabulates the JSON line each trial prints.
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest
import safetensors.torch
from e2e_helpers import s3_keys, store_prefix, wait_for_phase
from harness.minio import _http_ok

TRIALS = int(os.environ.get("EPNAS_DRILL_TRIALS", "1"))
SEED = int(os.environ.get("EPNAS_DRILL_SEED", "0"))
BUDGET = {"episodes": 1, "stepsPerEpisode": 2, "branches": 2, "topK": 2}
CHILDREN = 4


def corrupt_objects(minio, bucket: str, prefix: str) -> list[str]:
    """Keys under ``prefix`` that do not decode (JSON or safetensors)."""
    s3 = minio.s3_client()
    bad = []
    for key in s3_keys(minio, bucket, prefix):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            if key.endswith(".json"):
                json.loads(body)
            elif key.endswith(".safetensors"):
                safetensors.torch.load(body)
        except Exception as err:  # any decoding failure is a corrupt object
            bad.append(f"{key}: {type(err).__name__}")
    return bad


def outcome(control_plane, minio, bucket, namespace, name, status, jobs_seen) -> dict:
    prefix = store_prefix(control_plane, namespace, name)
    keys = s3_keys(minio, bucket, prefix + "children/")
    mine = [n for n in jobs_seen.uids.values() if n.startswith(f"{name}-")]
    return {
        "phase": status["phase"],
        "expected": CHILDREN,
        "children": sum(status["children"].values()),
        "failed": status["children"]["failed"],
        "results": len([k for k in keys if k.endswith("/result.json")]),
        "jobs": len(mine),
        "duplicate_jobs": len(mine) - len(set(mine)),
        "trained": status["children"]["succeeded"],
        "corrupt": corrupt_objects(minio, bucket, prefix),
    }


def check(result: dict) -> None:
    assert result["phase"] == "Succeeded", result
    assert result["children"] == result["results"] == CHILDREN, result  # no child lost
    assert result["duplicate_jobs"] == 0 and result["jobs"] == result["trained"], result
    assert result["corrupt"] == [], result


def start_search(control_plane, namespace, bucket, search_yaml, start_controller, job_log, name: str, trial: int):
    """A watch on the namespace's Jobs, a controller, and the drill's search applied: ``(jobs_seen, controller)``."""
    jobs_seen = job_log(namespace)
    ctl = start_controller(namespace)
    control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=search_yaml(name, bucket, budget=BUDGET, seed=trial)
    )
    return jobs_seen, ctl


def report(control_plane, minio, bucket, namespace, name, obj, jobs_seen, **drill) -> None:
    """Print the trial's ``DRILL {json}`` line (for bench/drills.py) and check it."""
    result = outcome(control_plane, minio, bucket, namespace, name, obj["status"], jobs_seen)
    print("DRILL " + json.dumps({**drill, **result}))
    check(result)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_controller_sigkilled_at_a_random_moment(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, job_log, trial
):
    rng = random.Random(SEED * 1000 + trial)
    name = f"kill{trial}"
    jobs_seen, ctl = start_search(control_plane, namespace, bucket, search_yaml, start_controller, job_log, name, trial)
    delay = rng.uniform(1.0, 20.0)
    time.sleep(delay)
    ctl.kill()
    again = start_controller(namespace)
    obj = wait_for_phase(control_plane, namespace, name, ("Succeeded", "Failed"), timeout_s=600, proc=again)
    report(
        control_plane,
        minio,
        bucket,
        namespace,
        name,
        obj,
        jobs_seen,
        drill="controller-sigkill",
        trial=trial,
        kill_after_s=round(delay, 1),
    )


@pytest.mark.parametrize("trial", range(TRIALS))
def test_minio_stopped_during_a_step(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, job_log, trial
):
    rng = random.Random(SEED * 1000 + 500 + trial)
    name = f"dark{trial}"
    jobs_seen, ctl = start_search(control_plane, namespace, bucket, search_yaml, start_controller, job_log, name, trial)
    delay, down = rng.uniform(2.0, 20.0), rng.uniform(3.0, 10.0)
    time.sleep(delay)
    minio.server.stop(grace_s=0)  # at once (SIGTERM, then SIGKILL): a crash in the middle of whatever it was writing
    time.sleep(down)
    minio.server.start()
    minio.server.wait_ready(lambda: _http_ok(f"{minio.endpoint}/minio/health/ready"), timeout_s=60)
    obj = wait_for_phase(control_plane, namespace, name, ("Succeeded", "Failed"), timeout_s=900, proc=ctl)
    report(
        control_plane,
        minio,
        bucket,
        namespace,
        name,
        obj,
        jobs_seen,
        drill="minio-outage",
        trial=trial,
        stop_after_s=round(delay, 1),
        down_s=round(down, 1),
    )


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kube_apiserver_restarted_mid_step(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, job_log, trial
):
    rng = random.Random(SEED * 1000 + 700 + trial)
    name = f"api{trial}"
    jobs_seen, ctl = start_search(control_plane, namespace, bucket, search_yaml, start_controller, job_log, name, trial)
    delay, down = rng.uniform(3.0, 20.0), rng.uniform(2.0, 8.0)
    time.sleep(delay)
    control_plane.restart_apiserver(down_s=down)
    # A leader that could not renew its Lease while the API server was away exits 1 (as
    # client-go's do); the kubelet would restart it: so does this test, once.
    restarted = False
    try:
        obj = wait_for_phase(control_plane, namespace, name, ("Succeeded", "Failed"), timeout_s=900, proc=ctl)
    except AssertionError:
        assert ctl.proc.poll() == 1 and "lost the lease" in ctl.output(), ctl.output()[-3000:]
        restarted = True
        ctl = start_controller(namespace)
        obj = wait_for_phase(control_plane, namespace, name, ("Succeeded", "Failed"), timeout_s=900, proc=ctl)
    report(
        control_plane,
        minio,
        bucket,
        namespace,
        name,
        obj,
        jobs_seen,
        drill="apiserver-restart",
        trial=trial,
        restart_after_s=round(delay, 1),
        down_s=round(down, 1),
        leader_restarted=restarted,
    )
