"""Benchmark: the local executor with one process per child (``warm=False``) vs warm workers (``warm=True``).

Trains the same 12 small ``digits`` children (5 epochs, batch 128, lr 0.1, no
parameter sharing, one training thread) through ``LocalExecutor`` at
parallelism 2 in each mode, submitted in steps of ``--per-step`` children as the
search loop does, on a ``file://`` store.  Prints, side by side: per-child wall
seconds as the executor sees them (median, max; warm includes the first
children's share of worker start-up), the trainer's own median ``trainSeconds``,
the total wall time of each mode (worker start and ``close()`` included), and
``os.getloadavg()`` before each mode, since the numbers mean little on a busy
machine.  Both modes must reach the same validation accuracies.
Usage: ``python bench/bench_local_workers.py [--children 12] [--per-step 3] [--parallelism 2] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from epnas.arch import parse_arch  # noqa: E402
from epnas.executors.base import ChildRun  # noqa: E402
from epnas.executors.local import LocalExecutor  # noqa: E402
from epnas.task import ChildTask  # noqa: E402

TRAINING = {"regime": "prediction", "epochs": 5, "batchSize": 128, "lr": 0.1, "parameterSharing": False}


def arch(i: int) -> dict:
    """Twelve small, different image-layer networks."""
    channels, width = (8, 16, 24)[i % 3], (3, 5)[(i // 3) % 2]
    layers = [{"op": "conv2d", "src1": 0, "channels": channels, "width": width, "activation": "relu"}]
    if i >= 6:
        layers.append({"op": "maxpool", "src1": 1, "width": 2})
    return {"space": "image-layer", "layers": layers}


def write_children(root: pathlib.Path, count: int) -> list[ChildRun]:
    runs = []
    for i in range(count):
        name = f"e000-s{i // 3:02d}-c{i % 3:02d}"
        child_dir = root / "search" / "children" / name
        child_dir.mkdir(parents=True)
        task = ChildTask(
            search="search", child=name, arch=parse_arch(arch(i)), dataset={"kind": "digits"}, training=TRAINING, seed=i
        )
        (child_dir / "arch.json").write_text(task.to_json())
        runs.append(
            ChildRun(
                search="search",
                child=name,
                arch_uri=(child_dir / "arch.json").as_uri(),
                out_uri=child_dir.as_uri(),
                weights_uri=None,
                timeout_s=600.0,
                episode=0,
                step=i // 3,
                index=i % 3,
            )
        )
    return runs


def run_mode(warm: bool, count: int, per_step: int, parallelism: int) -> dict:
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="epnas-bench-") as tmp:
        runs = write_children(pathlib.Path(tmp), count)
        started = time.monotonic()
        executor = LocalExecutor(parallelism=parallelism, retries=0, warm=warm, env={"EPNAS_TRAINER_THREADS": "1"})
        with executor:
            outcomes = [o for s in range(0, count, per_step) for o in executor.submit(runs[s : s + per_step])]
        total = time.monotonic() - started
        failed = [o for o in outcomes if not o.succeeded]
        if failed:
            raise SystemExit(
                f"{'warm' if warm else 'cold'}: {len(failed)} children failed: {failed[0].reason}: {failed[0].stderr_tail}"
            )
        results = [
            json.loads((pathlib.Path(r.out_uri.removeprefix("file://")) / "result.json").read_text()) for r in runs
        ]
    walls = [o.seconds for o in outcomes]
    return {
        "mode": "warm workers" if warm else "process per child",
        "load_before": [round(x, 2) for x in load],
        "child_wall_median_s": round(statistics.median(walls), 3),
        "child_wall_max_s": round(max(walls), 3),
        "train_seconds_median": round(statistics.median(r["trainSeconds"] for r in results), 3),
        "total_s": round(total, 2),
        "val_accuracy": [round(r["valAccuracy"], 4) for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=12)
    parser.add_argument("--per-step", type=int, default=3, help="children per submit (a search step)")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    cold = run_mode(False, args.children, args.per_step, args.parallelism)
    warm = run_mode(True, args.children, args.per_step, args.parallelism)
    report = {
        "cpus": os.cpu_count(),
        "children": args.children,
        "parallelism": args.parallelism,
        "per_step": args.per_step,
        "cold": cold,
        "warm": warm,
        "same_accuracies": cold["val_accuracy"] == warm["val_accuracy"],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "speedup_total": round(cold["total_s"] / warm["total_s"], 2),
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(
        f"{args.children} digits children, 5 epochs, parallelism {args.parallelism}, {args.per_step} per submit, {os.cpu_count()} CPUs"
    )
    print(f"{'':28}{'process per child':>20}{'warm workers':>16}")
    for key, label in (
        ("load_before", "load avg before (1/5/15 min)"),
        ("child_wall_median_s", "per-child wall median (s)"),
        ("child_wall_max_s", "per-child wall max (s)"),
        ("train_seconds_median", "trainSeconds median (s)"),
        ("total_s", "total wall (s)"),
    ):
        a, b = cold[key], warm[key]
        a, b = ("/".join(map(str, a)), "/".join(map(str, b))) if isinstance(a, list) else (a, b)
        print(f"{label:28}{a:>20}{b:>16}")
    print(
        f"load avg after: {'/'.join(map(str, report['load_after']))}; total speed-up {report['speedup_total']}x; "
        f"same validation accuracies: {report['same_accuracies']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
