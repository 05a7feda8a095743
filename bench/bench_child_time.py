"""Benchmark: wall time of one child on ``digits`` with the ``prediction`` regime (target < 30 s, 2 cores).

Runs ``python -m child_trainer`` as a subprocess exactly as the local executor does
(1 training thread by default, ``EPNAS_TRAINER_THREADS``), on a file:// store, and
reports the process wall time (interpreter start, imports, data, training,
evaluation, push, result) and the trainer's own ``trainSeconds``.  Prints JSON.
Usage: ``python bench/bench_child_time.py [--runs 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
ARCH = {
    "space": "image-layer",
    "layers": [
        {"op": "conv2d", "src1": 0, "channels": 64, "width": 3, "activation": "relu"},
        {"op": "dep-sep-conv2d", "src1": 1, "channels": 64, "width": 5, "activation": "swish"},
        {"op": "maxpool", "src1": 2, "width": 2},
        {"op": "conv2d", "src1": 3, "src2": 1, "channels": 128, "width": 3, "activation": "relu"},
    ],
}


def one_run(seed: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        child = pathlib.Path(tmp) / "search" / "children" / f"e000-s00-c{seed:02d}"
        child.mkdir(parents=True)
        task = {
            "search": "search",
            "child": child.name,
            "arch": ARCH,
            "dataset": {"kind": "digits"},
            "training": {"regime": "prediction"},
            "seed": seed,
        }
        (child / "arch.json").write_text(json.dumps(task))
        env = {**os.environ, "EPNAS_TRAINER_THREADS": str(threads)}
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "child_trainer",
                "--arch",
                (child / "arch.json").as_uri(),
                "--out",
                child.as_uri(),
                "--device",
                "cpu",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"trainer failed ({done.returncode}): {done.stderr}")
        result = json.loads((child / "result.json").read_text())
    return {
        "seed": seed,
        "wall_seconds": round(wall, 2),
        "train_seconds": result["trainSeconds"],
        "val_accuracy": round(result["valAccuracy"], 4),
        "epochs": result["epochsRun"],
        "params": result["metrics"]["params"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="children to time (seeds 0..N-1)")
    parser.add_argument("--threads", type=int, default=1, help="EPNAS_TRAINER_THREADS for the child")
    args = parser.parse_args(argv)
    rows = [one_run(seed, args.threads) for seed in range(args.runs)]
    walls = [r["wall_seconds"] for r in rows]
    json.dump(
        {"threads": args.threads, "rows": rows, "wall_median": statistics.median(walls), "wall_max": max(walls)},
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
