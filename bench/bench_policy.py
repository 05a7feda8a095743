"""Benchmark: time to sample one step's actions for N branches of 10-layer networks.

For each space and N, the median over ``--repeats`` of:

* ``batched``: one ``Policy.sample_batch`` call for all N (with grad, as the loop samples);
* ``one_by_one``: N ``Policy.sample`` calls;
* ``replay``: ``Policy.log_prob_batch`` forward + backward of N stored actions.

With the default PolicySpec (E 32, H 128, F 4).  ``--threads`` sets torch's intra-op
threads (1 is fastest for these small tensors, above all on a shared machine).
Prints a JSON summary.  Usage: ``python bench/bench_policy.py [--threads 1] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from epnas.arch import random_arch
from epnas.policy import Policy
from epnas.space import SPACES
from epnas.spec import PolicySpec


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 2)


def bench_space(name: str, branches: int, repeats: int) -> dict[str, float]:
    policy = Policy(SPACES[name], PolicySpec(), generator_seed=0)
    rng = random.Random(0)
    depth = 4 if name == "image-module" else 10
    archs = [random_arch(name, depth, rng) for _ in range(branches)]
    generator = torch.Generator().manual_seed(0)
    actions = [s.action for s in policy.sample_batch(archs, generator)]

    def replay() -> None:
        log_probs, _ = policy.log_prob_batch(archs, actions)
        log_probs.sum().backward()

    return {
        "batched_ms": median_ms(lambda: policy.sample_batch(archs, generator), repeats),
        "one_by_one_ms": median_ms(lambda: [policy.sample(a, generator) for a in archs], max(1, repeats // 4)),
        "replay_fwd_bwd_ms": median_ms(replay, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions per measurement")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = {
        f"{name}/N={n}": bench_space(name, n, args.repeats)
        for name in ("image-layer", "image-module", "kws-layer")
        for n in (8, 64)
    }
    print(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
