"""The search loop's own overhead per step, children excluded (issue 4).

Two numbers per N (8 and 64 branches), medians over ``--episodes`` × ``--steps``:

* compute: policy sampling for N networks, morphing, metrics and rewards, plus the
  episode's REINFORCE update spread over its steps — no I/O;
* whole step: the real ``SearchLoop`` with an instant executor (its own time, the
  children's result writes, is subtracted), so it adds the durable ``file://`` store
  writes: N ``arch.json``, the step plan, history, summary and checkpoint.

    .venv/bin/python bench/bench_loop.py [--episodes 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch
import yaml

from epnas import reinforce
from epnas.arch import random_arch
from epnas.executors.base import ChildOutcome, ChildRun
from epnas.metrics import compute_metrics
from epnas.morph import apply_action
from epnas.policy import Policy, make_optimizer
from epnas.reward import compute_reward
from epnas.search import SearchLoop
from epnas.space import get_space
from epnas.spec import dataset_geometry, parse_search
from epnas.store import open_store, split_uri
from epnas.task import ChildResult, load_task


class InstantExecutor:
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        started = time.perf_counter()
        for run in runs:
            root, key = split_uri(run.arch_uri)
            task = load_task(open_store(root).get_bytes(key))
            acc = 0.5 + 0.01 * task.arch.depth
            result = ChildResult(
                child=run.child,
                arch_hash=task.arch.hash,
                val_accuracy=min(acc, 1.0),
                test_accuracy=0.5,
                train_seconds=0.0,
                epochs_run=1,
            )
            open_store(run.out_uri).put_bytes("result.json", result.to_json().encode())
        self.seconds.append(time.perf_counter() - started)
        return [ChildOutcome(r.child, 0) for r in runs]


def search_doc(branches: int, episodes: int, steps: int):
    return parse_search(
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


def measure(branches: int, episodes: int, steps: int) -> float:
    """Median seconds per step of the real loop, executor time subtracted."""
    doc = search_doc(branches, episodes, steps)
    executor = InstantExecutor()
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(report) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"file://{tmp}"
        loop = SearchLoop(doc, store=open_store(uri), store_uri=uri, executor=executor, on_step=on_step)
        last[0] = time.perf_counter()
        loop.run()
    return statistics.median(t - e for t, e in zip(times, executor.seconds))


def measure_compute(branches: int, episodes: int, steps: int) -> float:
    """Median seconds per step of sampling + morph + metrics + reward, plus update / steps."""
    doc = search_doc(branches, episodes, steps)
    spec = doc.spec
    policy = Policy(get_space(spec.search_space), spec.policy, generator_seed=0)
    optimizer = make_optimizer(policy)
    generator = torch.Generator().manual_seed(0)
    geometry = dataset_geometry(spec)
    per_step: list[float] = []
    torch.set_num_threads(1)
    for _ in range(episodes):
        archs = [random_arch(spec.search_space, 8, random.Random(b)) for b in range(branches)]
        trajectory, rewards = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            with torch.no_grad():
                actions = [s.action for s in policy.sample_batch(archs, generator)]
            children = [apply_action(a, act).arch for a, act in zip(archs, actions)]
            row = [compute_reward(0.9, compute_metrics(c, *geometry), spec.constraints).reward for c in children]
            trajectory.append((archs, actions))
            rewards.append(row)
            archs = children
            per_step.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        flat_archs = [a for b in range(branches) for a in (trajectory[t][0][b] for t in range(steps))]
        flat_actions = [a for b in range(branches) for a in (trajectory[t][1][b] for t in range(steps))]
        log_probs, entropies = policy.log_prob_batch(flat_archs, flat_actions)
        returns = reinforce.returns_to_go(torch.tensor(rewards).T.contiguous())
        baseline = reinforce.MovingBaseline(0.9).update(returns)
        reinforce.update(
            policy, optimizer, log_probs.view(branches, steps), returns, baseline, entropies.view(branches, steps)
        )
        update = time.perf_counter() - t0
        per_step[-steps:] = [t + update / steps for t in per_step[-steps:]]
    return statistics.median(per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print("| branches N | compute per step (sample, morph, metrics, reward, update) | whole step with store writes |")
    print("|---:|---:|---:|")
    for n in (8, 64):
        compute = measure_compute(n, args.episodes, args.steps)
        whole = measure(n, args.episodes, args.steps)
        print(f"| {n} | {compute * 1000:.0f} ms | {whole * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
