"""SIGKILL the controller while a step's Jobs run; a new one adopts them and finishes the search
with exactly one Job per child ever created and no child trained twice."""

from __future__ import annotations

import collections
import time

from e2e_helpers import WRAPPER, read_search, s3_keys, search_jobs, store_prefix, wait_for_phase

CHILDREN = 12


def test_killed_controller_resumes_without_duplicates(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, job_log, trainer_state
):
    jobs_seen = job_log(namespace)
    state = trainer_state(bucket)
    # step 1's children train slowly, so they still run when the new controller takes the Lease
    # (the killed leader's expires first): it must adopt them, not create twins
    state.fail({f"e000-s01-c{i:02d}": {"sleep_s": 25} for i in range(3)})
    command = f"python {WRAPPER}"
    ctl = start_controller(namespace, trainer_command=command)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("crash", bucket))

    # wait until the second step's Jobs exist and run, then kill the controller mid-step
    deadline = time.monotonic() + 600
    while True:
        step1 = [j for j in search_jobs(control_plane, namespace, "crash") if j.metadata.labels["epnas.io/step"] == "1"]
        if step1 and not any(j.status.succeeded for j in step1):
            break
        assert time.monotonic() < deadline and ctl.proc.poll() is None, ctl.output()[-3000:]
        time.sleep(0.2)
    ctl.kill()
    children = store_prefix(control_plane, namespace, "crash") + "children/"
    before = s3_keys(minio, bucket, children)
    finished_before = {k: v for k, v in before.items() if k.endswith("/result.json")}
    assert read_search(control_plane, namespace, "crash")["status"]["phase"] == "Running"
    time.sleep(2)

    again = start_controller(namespace, trainer_command=command)
    obj = wait_for_phase(control_plane, namespace, "crash", ("Succeeded", "Failed"), timeout_s=900, proc=again)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert sum(status["children"].values()) == CHILDREN and status["children"]["failed"] == 0

    # exactly one Job per trained child ever created (a watch started before the first controller)
    # (children "cached" by the loop, same architecture as an earlier child, get no Job)
    names = list(jobs_seen.uids.values())
    trained = status["children"]["succeeded"]
    assert len(names) == len(set(names)) == trained == CHILDREN - status["children"]["cached"], sorted(names)
    assert len(search_jobs(control_plane, namespace, "crash")) == trained

    # no child trained twice: one trainer start and one success per child; earlier results untouched
    starts, done = collections.Counter(state.lines("starts")), collections.Counter(state.lines("done"))
    assert set(starts.values()) == {1} and set(done.values()) == {1} and len(done) == trained, (starts, done)
    after = s3_keys(minio, bucket, children)
    assert {k: after[k] for k in finished_before} == finished_before
    assert len([k for k in after if k.endswith("/result.json")]) == CHILDREN
    # the new controller found the killed one's step-1 Jobs and adopted them instead of creating twins
    assert "adopting" in again.output() and "episode 0 step 1" in again.output(), again.output()[-3000:]
