"""Fault drills with many trials: ``tests/e2e/test_fault_drills.py`` run with
``EPNAS_DRILL_TRIALS`` trials of each drill, on the harness's real control plane and MinIO,
then tabulated from the ``DRILL {json}`` line each trial prints.

    python bench/drills.py [--trials 20] [--seed 1] [--only controller|minio|apiserver] [--json runs/drills.json]

Each trial must end with the search Succeeded, every child's result in the store, no Job
created twice and no corrupt object; the table counts them (results in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = {
    "controller": "test_controller_sigkilled_at_a_random_moment",
    "minio": "test_minio_stopped_during_a_step",
    "apiserver": "test_kube_apiserver_restarted_mid_step",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=sorted(TESTS), help="one drill only")
    parser.add_argument("--json", type=pathlib.Path, help="write every trial's outcome here")
    args = parser.parse_args()
    selector = TESTS[args.only] if args.only else " or ".join(TESTS.values())
    env = {**os.environ, "EPNAS_DRILL_TRIALS": str(args.trials), "EPNAS_DRILL_SEED": str(args.seed)}
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-x",
            "-p",
            "no:cacheprovider",
            "tests/e2e/test_fault_drills.py",
            "-k",
            selector,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    # pytest's progress dots may precede a trial's line: ".DRILL {...}"
    trials = [json.loads(line.split("DRILL ", 1)[1]) for line in run.stdout.splitlines() if "DRILL {" in line]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(trials, indent=2))
        args.json.with_suffix(".log").write_text(run.stdout + run.stderr)
    passed = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    print(
        f"fault drills, {time.strftime('%Y-%m-%d')}, seed {args.seed}, {time.monotonic() - started:.0f} s; pytest exit {run.returncode}: {passed}"
    )
    print("| drill | trials | Succeeded | children lost | duplicate Jobs | corrupt objects |")
    print("|---|---:|---:|---:|---:|---:|")
    for drill in sorted({t["drill"] for t in trials}):
        rows = [t for t in trials if t["drill"] == drill]
        print(
            f"| {drill} | {len(rows)} | {sum(t['phase'] == 'Succeeded' for t in rows)} | "
            f"{sum(max(0, t['expected'] - t['results']) for t in rows)} | "
            f"{sum(t['duplicate_jobs'] for t in rows)} | {sum(len(t['corrupt']) for t in rows)} |"
        )
    if run.returncode:
        print(run.stdout[-4000:])
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
