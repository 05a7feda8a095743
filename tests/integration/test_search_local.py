"""``epnas search`` driven as a user would: a tiny synthetic search to the end, a search killed
with SIGKILL in the middle of a step and run again, and a bad search file."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).parent
TINY = HERE / "searches" / "tiny-synthetic.yaml"
EPNAS = [sys.executable, "-m", "epnas.cli"]
CHILDREN = 12  # 2 episodes × 2 steps × 3 branches


def search_cmd(store: pathlib.Path) -> list[str]:
    trainer = f"{sys.executable} {HERE / 'counting_trainer.py'}"
    return [
        *EPNAS,
        "search",
        str(TINY),
        "--store",
        store.as_uri(),
        "--parallelism",
        "2",
        "--quiet",
        "--trainer-command",
        trainer,
    ]


def env(log: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "EPNAS_COUNT_LOG": str(log), "EPNAS_TRAINER_THREADS": "1"}


def events(log: pathlib.Path, kind: str) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith(kind + " ")]


def results(store: pathlib.Path) -> list[pathlib.Path]:
    return sorted((store / "tiny-synthetic" / "children").glob("*/result.json"))


def test_tiny_search_finishes_and_reports_the_best(tmp_path) -> None:
    log = tmp_path / "trained.log"
    done = subprocess.run(search_cmd(tmp_path / "store"), env=env(log), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "store" / "tiny-synthetic" / "state" / "summary.json").read_text())
    assert summary["phase"] == "Succeeded" and summary["children"]["total"] == CHILDREN
    assert len(results(tmp_path / "store")) == CHILDREN
    trained = events(log, "done")
    assert len(trained) == len(set(trained)) == summary["children"]["succeeded"]
    assert summary["best"]["valAccuracy"] > 0.25  # 4 classes: better than chance
    assert "tiny-synthetic" in done.stdout and "Artifacts:" in done.stdout
    status = subprocess.run(
        [*EPNAS, "status", str(tmp_path / "store" / "tiny-synthetic")], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and "Succeeded" in status.stdout
    index = json.loads((tmp_path / "store" / "tiny-synthetic" / "weights" / "index.json").read_text())
    assert index["tensors"], "the shared weight dictionary was merged"


def test_sigkill_mid_step_then_rerun_trains_no_child_twice(tmp_path) -> None:
    store, log = tmp_path / "store", tmp_path / "trained.log"
    proc = subprocess.Popen(
        search_cmd(store), env=env(log), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while len(results(store)) < 4 and time.monotonic() < deadline:  # step 0 done, step 1 under way
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the search and its trainers, as a terminal's kill would
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in results(store)}
    assert 4 <= len(finished) < CHILDREN
    again = subprocess.run(search_cmd(store), env=env(log), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads((store / "tiny-synthetic" / "state" / "summary.json").read_text())
    assert summary["phase"] == "Succeeded" and summary["children"]["total"] == CHILDREN
    trained = events(log, "done")
    assert len(trained) == len(set(trained)), f"trained twice: {sorted(trained)}"
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "a finished child was trained again"
    restarted = [c for c in set(events(log, "start")) if events(log, "start").count(c) > 1]
    assert all(c not in [p.parent.name for p in finished] for c in restarted)
    assert len(results(store)) == CHILDREN


def test_a_bad_search_file_exits_2_listing_every_problem(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        TINY.read_text()
        .replace("episodes: 2", "episodes: 0")
        .replace("max: 20000", "max: -1")
        .replace("image-layer", "image-layers")
    )
    done = subprocess.run(
        [*EPNAS, "search", str(bad), "--store", (tmp_path / "s").as_uri()], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    for path in ("spec.budget.episodes", "spec.constraints[0].max", "spec.searchSpace"):
        assert path in done.stderr
    assert not (tmp_path / "s").exists()


def test_a_search_whose_children_all_fail_exits_1_and_says_why(tmp_path) -> None:
    """Warm workers and the real trainer: every child needs a dataset file that is not there."""
    broken = tmp_path / "broken.yaml"
    missing = tmp_path / "no-such-data.npz"
    broken.write_text(
        TINY.read_text()
        .replace("kind: synthetic", f"kind: npz\n    uri: {missing}")
        .replace("    options: {samples: 256}\n", "")
    )
    store = tmp_path / "store"
    done = subprocess.run(
        [*EPNAS, "search", str(broken), "--store", store.as_uri(), "--parallelism", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "search tiny-synthetic failed: every child of episode 0 step 0 failed" in done.stderr
    assert "InvalidInput" in done.stderr and "no-such-data.npz" in done.stderr
    summary = json.loads((store / "tiny-synthetic" / "state" / "summary.json").read_text())
    assert summary["phase"] == "Failed" and summary["children"] == {
        "total": 3,
        "succeeded": 0,
        "cached": 0,
        "failed": 3,
        "trained": 3,
    }
    assert "Succeeded" not in done.stdout


def test_raising_the_budget_extends_a_finished_search_and_other_changes_are_named(tmp_path) -> None:
    store = tmp_path / "store"
    one = tmp_path / "one.yaml"
    one.write_text(TINY.read_text().replace("episodes: 2", "episodes: 1"))
    cmd = lambda path: [*EPNAS, "search", str(path), "--store", store.as_uri(), "--parallelism", "2", "--quiet"]  # noqa: E731
    first = subprocess.run(cmd(one), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    done = {p.parent.name: p.stat().st_mtime_ns for p in results(store)}
    assert len(done) == 6
    again = subprocess.run(cmd(TINY), capture_output=True, text=True, timeout=300)  # episodes 1 → 2
    assert again.returncode == 0, again.stderr
    assert "extending search 'tiny-synthetic': spec.budget.episodes changed" in again.stderr
    summary = json.loads((store / "tiny-synthetic" / "state" / "summary.json").read_text())
    assert summary["phase"] == "Succeeded" and summary["children"]["total"] == CHILDREN and summary["episode"] == 2
    assert {
        p.parent.name: p.stat().st_mtime_ns for p in results(store) if p.parent.name in done
    } == done  # nothing retrained
    changed = tmp_path / "changed.yaml"
    changed.write_text(TINY.read_text().replace("seed: 4", "seed: 5").replace("max: 20000", "max: 30000"))
    refused = subprocess.run(cmd(changed), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "these fields differ: spec.constraints[0].max, spec.seed" in refused.stderr


def test_a_search_whose_training_diverges_fails_with_that_reason(tmp_path) -> None:
    """A learning rate that blows the loss up: each child is a failed child (Diverged), not a
    chance-level success, and the search ends Failed saying so."""
    diverging = tmp_path / "diverging.yaml"
    diverging.write_text(TINY.read_text().replace("lr: 0.1}", "lr: 1.0e+30}"))
    assert "lr: 1.0e+30" in diverging.read_text()
    store = tmp_path / "store"
    done = subprocess.run(
        [*EPNAS, "search", str(diverging), "--store", store.as_uri(), "--parallelism", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "every child of episode 0 step 0 failed" in done.stderr and "Diverged" in done.stderr
    assert "diverged: training loss" in done.stderr
    children = store / "tiny-synthetic" / "children"
    assert not list(children.glob("*/result.json")) and not list(children.glob("*/weights.safetensors"))
    assert not (store / "tiny-synthetic" / "weights" / "index.json").exists()
