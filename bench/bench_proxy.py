"""Benchmark: how well does the prediction regime (the search's proxy) rank children?

Draws ``--archs`` distinct image-layer architectures a digits search would train
(random depth 2–6 plus 0–3 random morphs, deduplicated by ``arch.hash``, at least
one convolution, ≤ 300,000 parameters, spread over model size, with some that meet
the digits-quick constraints), trains each under the **standard regime**
(``ChildTraining(regime="standard").resolved()``: Nesterov SGD, SGDR 0.05→0.001,
batch 128, 20 epochs) as the reference, then under a small grid of proxies, and
reports per proxy: Spearman ρ and Kendall τ against the reference (over all
architectures and over the reference's top half), the top-5 overlap, the median
seconds per child, the cost relative to the standard regime (median per-architecture
time ratio and analytic training work = epochs × samples × FLOPs).

Phases (a ``multiprocessing`` pool of ``--workers`` processes over architectures,
one torch thread each, CPU, seed 0, no weight sharing):

1. standard + prediction regime at batch 128, lr 0.1 (the digits demo's) for
   2/3/5/10 epochs + the project's prediction defaults (batch 1024, lr 0.5, 10 epochs);
2. EcoNAS knobs on the best phase-1 proxy (cheapest with ρ ≥ ``--target``, else
   highest ρ): sample ratio 0.5, channel factor 0.5, both.  Resolution is not
   tried: digits are 8×8 and the space's pools would collapse smaller inputs;
3. the best two proxies (``--select``: by ρ or by ρ over the reference's top half) again with training seed 1 (and, when ``--budget-min``
   leaves time, the standard regime with seed 1: the reference's own noise).

Prints a markdown table; writes JSON to ``--out``.
Usage: ``python bench/bench_proxy.py [--archs 24] [--seed 0] [--workers 2] [--quick] [--out /tmp/proxy.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from multiprocessing import get_context

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

from epnas.arch import Arch, parse_arch, random_arch, with_channel_factor  # noqa: E402
from epnas.metrics import compute_metrics  # noqa: E402
from epnas.morph import apply_action, random_action  # noqa: E402
from epnas.spec import ChildTraining  # noqa: E402

INPUT_SHAPE = (1, 8, 8)
CLASSES = 10
N_TRAIN = 1200  # digits split 1200/300/297
MAX_PARAMS = 300_000
QUICK_MAX_PARAMS = 30_000
CONV_OPS = ("conv2d", "dep-sep-conv2d")
# digits-quick.yaml: modelSize <= 25000, computeIntensity >= 5
FEASIBLE = {"max_params": 25_000, "min_intensity": 5.0}


def feasible(metrics) -> bool:
    return metrics.params <= FEASIBLE["max_params"] and metrics.compute_intensity >= FEASIBLE["min_intensity"]


# ---------------------------------------------------------------- architectures


def draw_archs(n: int, seed: int, max_params: int, pool_size: int = 600) -> list[dict]:
    """``n`` distinct architectures spread over log(params), about a third meeting the digits-quick constraints."""
    rng = random.Random(seed)
    pool: dict[str, tuple[Arch, object]] = {}
    for _ in range(pool_size):
        arch = random_arch("image-layer", rng.randint(2, 6), rng)
        for _ in range(rng.randint(0, 3)):
            arch = apply_action(arch, random_action(arch, rng)).arch
        if not any(layer.op in CONV_OPS for layer in arch.layers):
            continue  # head-only networks: any proxy ranks them last, which flatters ρ
        metrics = compute_metrics(arch, INPUT_SHAPE, CLASSES)
        if metrics.params <= max_params:
            pool.setdefault(arch.hash, (arch, metrics))
    items = sorted(pool.values(), key=lambda t: (t[1].params, t[0].hash))
    good = [t for t in items if feasible(t[1])]
    rest = [t for t in items if not feasible(t[1])]
    n_good = min(len(good), max(1, n // 3))
    chosen = _spread(good, n_good) + _spread(rest, n - n_good)
    chosen.sort(key=lambda t: t[1].params)
    return [
        {
            "index": i,
            "hash": a.hash,
            "arch": json.loads(a.to_json()),
            "depth": a.depth,
            "ops": [layer.op for layer in a.layers],
            "params": m.params,
            "flops": m.flops,
            "compute_intensity": round(m.compute_intensity, 3),
            "feasible": feasible(m),
        }
        for i, (a, m) in enumerate(chosen)
    ]


def _spread(items: list, k: int) -> list:
    """``k`` of ``items`` (sorted by params) nearest to ``k`` targets evenly spaced in log(params)."""
    if k >= len(items):
        return list(items)
    if k <= 0:
        return []
    logs = [math.log(m.params) for _, m in items]
    lo, hi = logs[0], logs[-1]
    left = list(range(len(items)))
    chosen = []
    for i in range(k):
        target = lo + (hi - lo) * (i / (k - 1) if k > 1 else 0.5)
        j = min(left, key=lambda j: (abs(logs[j] - target), j))
        left.remove(j)
        chosen.append(items[j])
    return chosen


# ---------------------------------------------------------------- configurations


def cfg(name: str, regime: str, **numbers) -> dict:
    return {"name": name, "regime": regime, **numbers}


def phase1_configs(quick: bool) -> list[dict]:
    if quick:
        return [
            cfg("P2 b128 lr0.1", "prediction", epochs=2, batch_size=128, lr=0.1),
            cfg("P-default b1024 lr0.5 e2", "prediction", epochs=2),
        ]
    return [cfg(f"P{e} b128 lr0.1", "prediction", epochs=e, batch_size=128, lr=0.1) for e in (2, 3, 5, 10)] + [
        cfg("P-default b1024 lr0.5 e10", "prediction")
    ]


def reference_config(quick: bool) -> dict:
    # --quick shortens the reference too (a smoke test of the code path, not a measurement)
    return cfg("standard e4 (quick)", "standard", epochs=4) if quick else cfg("standard", "standard")


def eco_variants(base: dict, quick: bool) -> list[dict]:
    knobs = [("sr0.5", {"sample_ratio": 0.5})]
    if not quick:
        knobs += [("cf0.5", {"channel_factor": 0.5}), ("sr0.5 cf0.5", {"sample_ratio": 0.5, "channel_factor": 0.5})]
    return [{**base, **extra, "name": f"{base['name']} + {tag}"} for tag, extra in knobs]


def training_of(config: dict) -> ChildTraining:
    fields = {k: v for k, v in config.items() if k not in ("name",)}
    return ChildTraining(parameter_sharing=False, **fields).resolved()


def work_units(config: dict, arch: dict) -> float:
    """Analytic training work: epochs × training samples × FLOPs of the (channel-scaled) network."""
    t = training_of(config)
    flops = arch["flops"]
    if t.channel_factor != 1:
        scaled = with_channel_factor(parse_arch(arch["arch"]), t.channel_factor)
        flops = compute_metrics(scaled, INPUT_SHAPE, CLASSES).flops
    return t.epochs * math.ceil(N_TRAIN * t.sample_ratio) * flops


# ---------------------------------------------------------------- training (workers)

_SPLITS: dict = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _splits(seed: int, sample_ratio: float, resolution: int | None):
    from child_trainer.data import load_dataset
    from epnas.spec import Dataset

    key = (seed, sample_ratio, resolution)
    if key not in _SPLITS:
        _SPLITS[key] = load_dataset(
            Dataset(kind="digits"), space="image-layer", seed=seed, resolution=resolution, sample_ratio=sample_ratio
        )
    return _SPLITS[key]


def train_one(arch_json: dict, config: dict, seed: int) -> dict:
    """Train one child exactly as the trainer does (``child_trainer.cli._run``, minus I/O)."""
    import torch

    from child_trainer.train import train_child
    from epnas.build import build_model

    training = training_of(config)
    splits = _splits(seed, training.sample_ratio, training.resolution)
    arch = with_channel_factor(parse_arch(arch_json), training.channel_factor)
    torch.manual_seed(seed)
    model = build_model(arch, splits.input_shape, splits.num_classes)
    outcome = train_child(model, splits, training, seed=seed, device=torch.device("cpu"))
    return {
        "val_accuracy": outcome.val_accuracy,
        "test_accuracy": outcome.test_accuracy,
        "seconds": outcome.seconds,
        "epochs_run": outcome.epochs_run,
        "warnings": outcome.warnings,
    }


def _task(job: tuple) -> tuple[int, list[tuple[str, int, dict]]]:
    index, arch_json, jobs = job
    return index, [(config["name"], seed, train_one(arch_json, config, seed)) for config, seed in jobs]


def run_phase(pool, archs: list[dict], jobs: list[tuple[dict, int]], results: dict, label: str) -> float:
    """Train every (config, seed) of ``jobs`` on every architecture; biggest networks first."""
    started = time.monotonic()
    order = sorted(archs, key=lambda a: -a["flops"])
    done = 0
    for index, rows in pool.imap_unordered(_task, [(a["index"], a["arch"], jobs) for a in order]):
        for name, seed, row in rows:
            results.setdefault(name, {}).setdefault(seed, {})[index] = row
        done += 1
        print(
            f"  [{label}] {done}/{len(archs)} archs ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True
        )
    return time.monotonic() - started


# ---------------------------------------------------------------- statistics


def top_k(acc: list[float], k: int) -> set[int]:
    return set(sorted(range(len(acc)), key=lambda i: (-acc[i], i))[:k])


def _r(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 3)


def compare(proxy: list[float], ref: list[float]) -> dict:
    n = len(ref)
    rho = spearmanr(proxy, ref).statistic
    tau = kendalltau(proxy, ref).statistic
    half = sorted(range(n), key=lambda i: -ref[i])[: n // 2]
    rho_top = spearmanr([proxy[i] for i in half], [ref[i] for i in half]).statistic if len(half) >= 3 else float("nan")
    k = min(5, n)
    return {
        "rho": _r(rho),
        "tau": _r(tau),
        "rho_top_half": _r(rho_top),
        "top5_overlap": len(top_k(proxy, k) & top_k(ref, k)),
    }


def summarize(
    name: str, config: dict, seed: int, results: dict, archs: list[dict], ref_name: str, ref_seed: int = 0
) -> dict:
    idx = [a["index"] for a in archs]
    rows = results[name][seed]
    ref_rows = results[ref_name][ref_seed]
    acc = [rows[i]["val_accuracy"] for i in idx]
    ref = [ref_rows[i]["val_accuracy"] for i in idx]
    secs = [rows[i]["seconds"] for i in idx]
    ratios = [rows[i]["seconds"] / ref_rows[i]["seconds"] for i in idx]
    ref_cfg = results["_configs"][ref_name]
    work = sum(work_units(config, a) for a in archs) / sum(work_units(ref_cfg, a) for a in archs)
    out = {
        "config": name,
        "seed": seed,
        **compare(acc, ref),
        "median_seconds": round(statistics.median(secs), 2),
        "cost_time": round(statistics.median(ratios), 3),
        "cost_work": round(work, 3),
        "mean_val_accuracy": round(float(np.mean(acc)), 4),
        "warnings": sum(len(rows[i]["warnings"]) for i in idx),
    }
    return out


def table(summaries: list[dict]) -> str:
    head = "| proxy | seed | ρ (Spearman) | τ (Kendall) | ρ top half | top-5 ∩ | median s/child | cost (time) | cost (work) | mean val acc |"
    lines = [head, "|" + "---|" * 10]
    for s in summaries:
        lines.append(
            f"| {s['config']} | {s['seed']} | {s['rho']} | {s['tau']} | {s['rho_top_half']} | {s['top5_overlap']}/5 | "
            f"{s['median_seconds']} | {s['cost_time']:.3f} | {s['cost_work']:.3f} | {s['mean_val_accuracy']:.3f} |"
        )
    return "\n".join(lines)


def rank_key(s: dict, target: float, metric: str = "rho") -> tuple:
    """Passing proxies (``metric`` ≥ target) first, cheapest (measured time ratio) first, ties to the
    higher value; then the rest by descending value."""
    rho = s[metric] if s[metric] is not None else -2.0
    return (0, round(s["cost_time"], 2), -rho) if rho >= target else (1, -rho, s["cost_time"])


def pick(summaries: list[dict], target: float, metric: str = "rho") -> dict:
    """Cheapest (median time ratio to the reference) proxy with ``metric`` ≥ target; else the highest."""
    return min(summaries, key=lambda s: rank_key(s, target, metric))


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=24, help="architectures (≥ 20 for a real run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the architecture draw")
    parser.add_argument("--workers", type=int, default=2, help="training processes (one torch thread each)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 6 small archs, 2 proxies, 4-epoch reference")
    parser.add_argument("--target", type=float, default=0.8, help="ρ a proxy must reach")
    parser.add_argument(
        "--select",
        choices=("rho", "rho_top_half"),
        default="rho",
        help="criterion for the phase-2 base and the phase-3 repeats: ρ over all archs or over the reference's top half",
    )
    parser.add_argument(
        "--budget-min", type=float, default=33.0, help="skip the seed-1 standard run if it would not fit"
    )
    parser.add_argument("--out", default="/tmp/proxy.json")
    args = parser.parse_args(argv)

    wall0 = time.monotonic()
    load_start = os.getloadavg()
    n = 6 if args.quick else args.archs
    archs = draw_archs(n, args.seed, QUICK_MAX_PARAMS if args.quick else MAX_PARAMS)
    n_feasible = sum(a["feasible"] for a in archs)
    print(f"load average at start: {load_start}; cores: {os.cpu_count()}; workers: {args.workers}")
    print(
        f"{len(archs)} architectures (seed {args.seed}), {n_feasible} meet digits-quick (params ≤ 25000, intensity ≥ 5):"
    )
    print("| # | hash | depth | ops | params | FLOPs | FLOPs/byte | feasible |")
    print("|---|---|---|---|---|---|---|---|")
    for a in archs:
        print(
            f"| {a['index']} | {a['hash'][:10]} | {a['depth']} | {' '.join(a['ops'])} | {a['params']:,} | {a['flops']:,} | {a['compute_intensity']} | {'yes' if a['feasible'] else ''} |"
        )
    sys.stdout.flush()

    ref_cfg = reference_config(args.quick)
    configs = phase1_configs(args.quick)
    results: dict = {"_configs": {c["name"]: c for c in [ref_cfg, *configs]}}
    phases: dict[str, float] = {}
    loads = {"start": load_start}
    ctx = get_context("fork")
    with ctx.Pool(args.workers, initializer=_init_worker) as pool:
        phases["1 reference + proxies"] = run_phase(
            pool, archs, [(ref_cfg, 0)] + [(c, 0) for c in configs], results, "phase 1"
        )
        loads["after phase 1"] = os.getloadavg()
        summaries = [summarize(c["name"], c, 0, results, archs, ref_cfg["name"]) for c in configs]
        base_summary = pick(summaries, args.target, args.select)
        base = results["_configs"][base_summary["config"]]
        print(
            f"\nphase 1 best proxy by {args.select}: {base['name']} ({base_summary[args.select]})",
            file=sys.stderr,
            flush=True,
        )

        ecos = eco_variants(base, args.quick)
        results["_configs"].update({c["name"]: c for c in ecos})
        phases["2 EcoNAS knobs"] = run_phase(pool, archs, [(c, 0) for c in ecos], results, "phase 2")
        loads["after phase 2"] = os.getloadavg()
        summaries += [summarize(c["name"], c, 0, results, archs, ref_cfg["name"]) for c in ecos]

        # the best two: the cheapest passing ones (then the highest ρ)
        ranked = sorted(summaries, key=lambda s: rank_key(s, args.target, args.select))
        best2 = [results["_configs"][s["config"]] for s in ranked[:2]]
        repeat_jobs = [(c, 1) for c in best2]
        elapsed = time.monotonic() - wall0
        ref_secs = sum(results[ref_cfg["name"]][0][a["index"]]["seconds"] for a in archs)
        est_repeat = sum(results[c["name"]][0][a["index"]]["seconds"] for c in best2 for a in archs) / args.workers
        est_std = ref_secs / args.workers
        with_std = elapsed + est_repeat + est_std < args.budget_min * 60
        if with_std:
            repeat_jobs.append((ref_cfg, 1))
        print(
            f"phase 3: repeat {[c['name'] for c in best2]} with seed 1"
            + (
                " and the standard regime"
                if with_std
                else f" (standard seed 1 skipped: ~{est_std:.0f} s would not fit)"
            ),
            file=sys.stderr,
            flush=True,
        )
        phases["3 seed-1 repeats"] = run_phase(pool, archs, repeat_jobs, results, "phase 3")
        loads["end"] = os.getloadavg()

    repeats = [summarize(c["name"], c, 1, results, archs, ref_cfg["name"], 0) for c in best2]
    stability = []
    idx = [a["index"] for a in archs]
    for c in best2:
        s0 = [results[c["name"]][0][i]["val_accuracy"] for i in idx]
        s1 = [results[c["name"]][1][i]["val_accuracy"] for i in idx]
        row = {"config": c["name"], "rho_seed0_vs_seed1": _r(spearmanr(s0, s1).statistic)}
        if with_std:
            r1 = [results[ref_cfg["name"]][1][i]["val_accuracy"] for i in idx]
            row["rho_seed1_vs_standard_seed1"] = _r(spearmanr(s1, r1).statistic)
            row["rho_seed0_vs_standard_seed1"] = _r(spearmanr(s0, r1).statistic)
        stability.append(row)
    std_self = None
    if with_std:
        r0 = [results[ref_cfg["name"]][0][i]["val_accuracy"] for i in idx]
        r1 = [results[ref_cfg["name"]][1][i]["val_accuracy"] for i in idx]
        std_self = {**compare(r1, r0), "config": f"{ref_cfg['name']} seed 1 vs seed 0"}

    best = pick(summaries, args.target, args.select)
    wall = time.monotonic() - wall0
    print("\n## Proxies vs the standard regime (seed 0 reference)\n")
    print(table(summaries))
    print("\n## Seed-1 repeats (vs the seed-0 standard reference)\n")
    print(table(repeats))
    print("\n| proxy | ρ(seed 0, seed 1) | ρ(seed 1, std seed 1) | ρ(seed 0, std seed 1) |\n|---|---|---|---|")
    for s in stability:
        print(
            f"| {s['config']} | {s['rho_seed0_vs_seed1']} | {s.get('rho_seed1_vs_standard_seed1', '–')} | {s.get('rho_seed0_vs_standard_seed1', '–')} |"
        )
    if std_self:
        print(
            f"\nreference noise: standard seed 1 vs seed 0: ρ {std_self['rho']}, τ {std_self['tau']}, ρ top half {std_self['rho_top_half']}, top-5 ∩ {std_self['top5_overlap']}/5"
        )
    ref_rows = results[ref_cfg["name"]][0]
    ref_acc = [ref_rows[i]["val_accuracy"] for i in idx]
    print(
        f"\nreference ({ref_cfg['name']}): median {statistics.median(r['seconds'] for r in ref_rows.values()):.1f} s/child, "
        f"val accuracy {min(ref_acc):.3f}–{max(ref_acc):.3f} (median {statistics.median(ref_acc):.3f})"
    )
    label = {"rho": "ρ", "rho_top_half": "ρ top half"}[args.select]
    for metric, mlabel in (("rho", "ρ"), ("rho_top_half", "ρ top half")):
        b = pick(summaries, args.target, metric)
        ok = b[metric] is not None and b[metric] >= args.target
        verdict = (
            f"cheapest with {mlabel} ≥ {args.target:.2f}"
            if ok
            else f"none reaches {mlabel} ≥ {args.target:.2f}; highest {mlabel}"
        )
        print(
            f"{verdict}: {b['config']} (ρ {b['rho']}, ρ top half {b['rho_top_half']}, τ {b['tau']}, cost {b['cost_time']:.3f} time / {b['cost_work']:.3f} work)"
        )
    print(f"(phases 2–3 chose by {label})")
    print(
        "resolution proxy: not tried — digits are 8×8 already; a smaller input leaves the space's 2–3-wide pools and 7-wide kernels nothing to work on"
    )
    print(
        f"load average: start {loads['start']}, end {loads['end']}; wall {wall:.0f} s; phases "
        + ", ".join(f"{k}: {v:.0f} s" for k, v in phases.items())
    )

    per_arch = []
    for a in archs:
        row = {k: a[k] for k in ("index", "hash", "depth", "ops", "params", "flops", "compute_intensity", "feasible")}
        row["accuracy"] = {
            f"{name} @seed{seed}": round(results[name][seed][a["index"]]["val_accuracy"], 4)
            for name in results
            if name != "_configs"
            for seed in results[name]
        }
        row["seconds"] = {
            f"{name} @seed{seed}": round(results[name][seed][a["index"]]["seconds"], 2)
            for name in results
            if name != "_configs"
            for seed in results[name]
        }
        row["arch"] = a["arch"]
        per_arch.append(row)
    report = {
        "args": vars(args),
        "quick": args.quick,
        "reference": ref_cfg,
        "reference_resolved": training_of(ref_cfg).model_dump(),
        "configs": {k: v for k, v in results["_configs"].items()},
        "n_archs": len(archs),
        "n_feasible_digits_quick": n_feasible,
        "summaries": summaries,
        "repeats": repeats,
        "stability": stability,
        "standard_seed_noise": std_self,
        "best": best,
        "target": args.target,
        "select": args.select,
        "best_by": {m: pick(summaries, args.target, m) for m in ("rho", "rho_top_half")},
        "load_average": loads,
        "cpu_count": os.cpu_count(),
        "wall_seconds": round(wall, 1),
        "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
        "archs": per_arch,
    }
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
