"""The search loop's own overhead per step, children excluded (issue 4).

An instant executor writes each child's result in-process, so a step's time is the
loop's work: policy sampling, morphing, metrics, rewards, store writes of arch.json,
history and checkpoint, and (once per episode) the REINFORCE update.  Reports the
median per step over ``--episodes`` × ``--steps`` for N = 8 and N = 64 branches.

    .venv/bin/python bench/bench_loop.py [--episodes 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import yaml

from epnas.executors.base import ChildOutcome, ChildRun
from epnas.search import SearchLoop
from epnas.spec import parse_search
from epnas.store import open_store, split_uri
from epnas.task import ChildResult, load_task


class InstantExecutor:
    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        for run in runs:
            root, key = split_uri(run.arch_uri)
            task = load_task(open_store(root).get_bytes(key))
            acc = 0.5 + 0.01 * task.arch.depth
            result = ChildResult(child=run.child, arch_hash=task.arch.hash, val_accuracy=min(acc, 1.0), test_accuracy=0.5, train_seconds=0.0, epochs_run=1)
            open_store(run.out_uri).put_bytes("result.json", result.to_json().encode())
        return [ChildOutcome(r.child, 0) for r in runs]


def measure(branches: int, episodes: int, steps: int) -> tuple[float, float]:
    doc = parse_search(
        yaml.safe_load(
            f"""
apiVersion: epnas.io/v1alpha1
kind: ArchitectureSearch
metadata: {{name: bench}}
spec:
  initialArchitecture: {{random: {{depth: 8}}}}
  dataset: {{kind: cifar10, uri: /unused}}
  constraints: [{{metric: modelSize, max: 1000000}}, {{metric: computeIntensity, min: 20}}]
  budget: {{episodes: {episodes}, stepsPerEpisode: {steps}, branches: {branches}, topK: 8}}
  childTraining: {{parameterSharing: false}}
"""
        )
    )
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(report) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"file://{tmp}"
        loop = SearchLoop(doc, store=open_store(uri), store_uri=uri, executor=InstantExecutor(), on_step=on_step)
        last[0] = time.perf_counter()
        loop.run()
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print("| branches N | median per step | slowest step (includes the episode's update) |")
    print("|---:|---:|---:|")
    for n in (8, 64):
        median, worst = measure(n, args.episodes, args.steps)
        print(f"| {n} | {median * 1000:.0f} ms | {worst * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
