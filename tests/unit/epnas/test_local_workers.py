"""Warm trainer workers behind ``LocalExecutor``: reuse, a killed worker, a timeout, invalid input, close.

Real processes and the real trainer on the digits dataset, ``file://`` store under tmp_path.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest

from epnas.arch import parse_arch
from epnas.executors.base import ChildRun
from epnas.executors.local import LocalExecutor
from epnas.task import ChildTask

REPO = pathlib.Path(__file__).resolve().parents[3]
FAST = {
    "space": "image-layer",
    "layers": [{"op": "conv2d", "src1": 0, "channels": 8, "width": 3, "activation": "relu"}],
}
SLOW = {
    "space": "image-layer",
    "layers": [  # ~0.5 s per epoch on one thread
        {"op": "conv2d", "src1": 0, "channels": 64, "width": 3, "activation": "relu"},
        {"op": "conv2d", "src1": 1, "channels": 64, "width": 3, "activation": "relu"},
    ],
}
SLOW_EPOCHS = 10
KILL_AFTER_S = 1.0  # into a slow child on a warm worker


def child(root: pathlib.Path, name: str, arch: dict = FAST, *, epochs: int = 1, timeout_s: float = 300.0) -> ChildRun:
    child_dir = root / "search" / "children" / name
    child_dir.mkdir(parents=True, exist_ok=True)
    task = ChildTask(
        search="search",
        child=name,
        arch=parse_arch(arch),
        dataset={"kind": "digits"},
        training={"regime": "prediction", "epochs": epochs, "batchSize": 128},
        seed=1,
    )
    (child_dir / "arch.json").write_text(task.to_json())
    return ChildRun(
        search="search",
        child=name,
        arch_uri=(child_dir / "arch.json").as_uri(),
        out_uri=child_dir.as_uri(),
        weights_uri=None,
        timeout_s=timeout_s,
        episode=0,
        step=0,
        index=0,
    )


def result_of(run: ChildRun) -> dict | None:
    path = pathlib.Path(run.out_uri.removeprefix("file://")) / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def executor(**kwargs) -> LocalExecutor:
    return LocalExecutor(env={"EPNAS_TRAINER_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, **kwargs)


def kill_later(pid: int) -> threading.Timer:
    timer = threading.Timer(KILL_AFTER_S, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def test_mode_follows_the_trainer_command():
    assert LocalExecutor().warm is True
    assert LocalExecutor(trainer_command=["my-trainer"]).warm is False
    assert LocalExecutor(warm=False).warm is False
    with pytest.raises(ValueError):
        LocalExecutor(trainer_command=["my-trainer"], warm=True)
    assert LocalExecutor(trainer_command=["my-trainer"]).worker_pids() == []


def test_warm_workers_train_children_across_submits_and_are_reused(tmp_path):
    with executor(parallelism=2, retries=1) as ex:
        first = [child(tmp_path, f"e000-s00-c{i:02d}") for i in range(3)]
        outcomes = ex.submit(first)
        assert [o.child for o in outcomes] == [r.child for r in first]
        assert all(o.succeeded and o.attempts == 1 and o.reason == "Completed" for o in outcomes), outcomes
        pids = sorted(ex.worker_pids())
        assert len(pids) == 2
        second = [child(tmp_path, f"e000-s01-c{i:02d}") for i in range(2)]
        assert all(o.succeeded for o in ex.submit(second))
        assert sorted(ex.worker_pids()) == pids, "the same workers trained the second step"
    for run in first + second:
        assert result_of(run)["archHash"] == parse_arch(FAST).hash
        assert result_of(run)["child"] == run.child


def test_a_warm_worker_trains_exactly_like_a_fresh_process(tmp_path):
    cold = child(tmp_path / "cold", "e000-s00-c01", SLOW, epochs=2)
    warm = child(tmp_path / "warm", "e000-s00-c01", SLOW, epochs=2)
    with executor(parallelism=1, warm=False) as ex:
        assert ex.submit([cold])[0].succeeded
    with executor(parallelism=1) as ex:  # a child ran on the worker before: no state may leak into the next
        assert [o.succeeded for o in ex.submit([child(tmp_path / "warm", "e000-s00-c00"), warm])] == [True, True]
    assert result_of(cold)["history"] == result_of(warm)["history"]
    assert result_of(cold)["valAccuracy"] == result_of(warm)["valAccuracy"]


def test_a_worker_killed_mid_child_is_replaced_and_the_child_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="epnas.executors.local")
    with executor(parallelism=1, retries=1) as ex:
        assert ex.submit([child(tmp_path, "e000-s00-c00")])[0].succeeded  # the worker is warm
        [pid] = ex.worker_pids()
        slow = child(tmp_path, "e000-s00-c01", SLOW, epochs=SLOW_EPOCHS)
        killer = kill_later(pid)
        [outcome] = ex.submit([slow])
        killer.join()
        assert outcome.succeeded and outcome.attempts == 2, outcome
        assert "attempt 1 failed: WorkerDied: killed by SIGKILL" in caplog.text
        [new_pid] = ex.worker_pids()
        assert new_pid != pid and not alive(pid)
    assert result_of(slow)["archHash"] == parse_arch(SLOW).hash


def test_without_retries_a_killed_worker_fails_the_child_and_a_resume_trains_it(tmp_path):
    with executor(parallelism=1, retries=0) as ex:
        assert ex.submit([child(tmp_path, "e000-s00-c00")])[0].succeeded
        [pid] = ex.worker_pids()
        slow = child(tmp_path, "e000-s00-c01", SLOW, epochs=SLOW_EPOCHS)
        killer = kill_later(pid)
        [failed] = ex.submit([slow])
        killer.join()
        assert not failed.succeeded and failed.exit_code is None and failed.attempts == 1
        assert failed.reason == "WorkerDied: killed by SIGKILL"
        assert result_of(slow) is None
        [resumed] = ex.submit([slow])
        assert resumed.succeeded and resumed.attempts == 1
    assert result_of(slow)["archHash"] == parse_arch(SLOW).hash


def test_a_timeout_kills_the_worker_and_the_next_child_still_runs(tmp_path):
    with executor(parallelism=1, retries=1) as ex:
        assert ex.submit([child(tmp_path, "e000-s00-c00")])[0].succeeded
        [pid] = ex.worker_pids()
        late = child(tmp_path, "e000-s00-c01", SLOW, epochs=SLOW_EPOCHS, timeout_s=1.0)
        [outcome] = ex.submit([late])
        assert outcome.exit_code is None and outcome.reason == "DeadlineExceeded after 1 s"
        assert outcome.attempts == 2, "a timeout is a failed attempt, retried"
        assert not alive(pid) and result_of(late) is None
        after = child(tmp_path, "e000-s00-c02")
        [ok] = ex.submit([after])
        assert ok.succeeded and ex.worker_pids() and ex.worker_pids() != [pid]
    assert result_of(after) is not None


def test_invalid_input_is_not_retried_and_keeps_the_worker(tmp_path):
    with executor(parallelism=1, retries=3) as ex:
        good = child(tmp_path, "e000-s00-c00")
        bad = child(tmp_path, "e000-s00-c01")
        pathlib.Path(bad.arch_uri.removeprefix("file://")).write_text("{not json")
        [ok, invalid] = ex.submit([good, bad])
        assert ok.succeeded
        assert invalid.exit_code == 2 and invalid.attempts == 1 and invalid.reason == "InvalidInput"
        assert "epnas-trainer: invalid input:" in invalid.stderr_tail and "not valid JSON" in invalid.stderr_tail
        pids = ex.worker_pids()
        assert ex.submit([bad])[0].attempts == 1 and ex.worker_pids() == pids
    assert result_of(bad) is None


def test_close_leaves_no_worker_alive(tmp_path):
    ex = executor(parallelism=2)
    assert all(o.succeeded for o in ex.submit([child(tmp_path, f"e000-s00-c{i:02d}") for i in range(2)]))
    pids = ex.worker_pids()
    assert len(pids) == 2 and all(alive(p) for p in pids)
    ex.close()
    assert ex.worker_pids() == [] and not any(alive(p) for p in pids)
    ex.close()  # idempotent


# ---------------------------------------------------------------- the worker protocol itself


def test_worker_protocol_keeps_stdout_for_replies(tmp_path):
    """``--help`` prints to stdout: it must land in the child's stderr file, not in the reply stream."""
    help_err, bad_err = tmp_path / "help.err", tmp_path / "bad.err"
    requests = [
        json.dumps({"argv": ["--help"], "stderr": str(help_err)}),
        "not json",
        json.dumps(
            {
                "argv": ["--arch", (tmp_path / "none.json").as_uri(), "--out", tmp_path.as_uri()],
                "stderr": str(bad_err),
                "termination_log": str(tmp_path / "term"),
            }
        ),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "child_trainer.worker"],
        input="\n".join(requests) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr  # end of input: exit 0
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["exit_code"] for r in replies] == [0, 2, 2]
    assert "usage:" in help_err.read_text().lower() and "usage:" not in done.stdout.lower()
    assert "not valid JSON" in replies[1]["error"]
    assert "invalid input" in bad_err.read_text()
    assert json.loads((tmp_path / "term").read_text())["exitCode"] == 2


def test_an_exception_escaping_main_is_exit_1_with_its_traceback(tmp_path, monkeypatch):
    import child_trainer.cli
    from child_trainer import worker

    def boom(argv):
        print("a print in the child")
        raise RuntimeError("boom")

    monkeypatch.setattr(child_trainer.cli, "main", boom)
    err = tmp_path / "err"
    assert worker.run_request({"argv": [], "stderr": str(err), "termination_log": str(tmp_path / "t")}) == 1
    text = err.read_text()
    assert "Traceback" in text and "RuntimeError: boom" in text and "a print in the child" in text
    assert "EPNAS_TERMINATION_LOG" not in os.environ or os.environ["EPNAS_TERMINATION_LOG"] != str(tmp_path / "t")


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "process-per-child"])
def test_a_diverging_child_fails_once_with_its_reason(tmp_path, warm):
    """Exit 3 (training diverged) is a failed child, never retried: a seeded retry diverges again."""
    run = child(tmp_path, "e000-s00-c00")
    task = json.loads(pathlib.Path(run.arch_uri.removeprefix("file://")).read_text())
    task["training"]["lr"] = 1e30
    pathlib.Path(run.arch_uri.removeprefix("file://")).write_text(json.dumps(task))
    with executor(parallelism=1, retries=3, warm=warm) as ex:
        [outcome] = ex.submit([run])
    assert outcome.exit_code == 3 and outcome.attempts == 1 and outcome.reason == "Diverged", outcome
    assert "epnas-trainer: diverged: training loss" in outcome.stderr_tail
    assert result_of(run) is None
