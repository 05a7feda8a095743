"""The public race: search methods on the same problems, budgets, trainer and seeds.

    python bench/race.py [--problems digits-quick,digits-flops,kws-synthetic] [--seeds 1,2,3,4,5]
                         [--children 36] [--methods ...] [--parallelism 2] [--out runs/race]

Every method trains exactly ``--children`` children (a network trained before is served
from cache and costs nothing), through the same local executor, the same trainer and
the same ``childTraining`` of the problem file (``bench/problems/*.yaml``), weight
sharing included when the problem turns it on:

* ``epnas``        the shipped strategy (``epnas.strategy.EpnasStrategy``), the search loop;
* ``epnas-paper``  the paper's algorithm exactly, the search loop;
* ``random``       uniform morphing actions in the same progressive loop;
* ``random-sample`` networks drawn uniformly from the space (depth, then every layer's
  choices and skip), no progression;
* ``optuna-tpe``   Optuna's TPE (``multivariate=True, group=True``, each trial's constraints set
  with ``Trial.set_constraint`` to the project's own violations ``V_i``, ≤ 0 exactly when feasible) over the same
  conditional space as ``random-sample``, maximising validation accuracy; ask/tell in
  batches of ``--parallelism``.

Per method, problem and seed: children trained before the first feasible one, feasible
children, best feasible validation and test accuracy, the best feasible validation
accuracy after 25/50/100 % of the budget, wall seconds.  Writes ``race.json`` and
``race.md`` (one table per problem: medians over seeds, and per-seed wins of ``epnas``)
under ``--out``.  Optuna is the ``[bench]`` extra, never a runtime dependency.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from epnas.arch import OP_FIELDS, Arch, Layer, field_values, parse_arch
from epnas.checkpoint import read_history
from epnas.errors import SpecError
from epnas.executors.base import ChildRun
from epnas.executors.local import LocalExecutor
from epnas.metrics import compute_metrics
from epnas.records import ChildRecord
from epnas.reward import compute_reward
from epnas.search import WEIGHTS_PREFIX, SearchLoop
from epnas.space import LayerSpace, get_space
from epnas.spec import ArchitectureSearch, dataset_geometry, parse_search
from epnas.store import StoreNotFound, join_uri, open_store
from epnas.task import ChildTask, load_result
from epnas.weights import merge

HERE = pathlib.Path(__file__).parent
PROBLEMS = ("digits-quick", "digits-flops", "kws-synthetic")
LOOP_METHODS = ("epnas", "epnas-paper", "random")
METHODS = (*LOOP_METHODS, "random-sample", "optuna-tpe")
MAX_DEPTH = 6
FRACTIONS = (0.25, 0.5, 1.0)


@dataclass
class Trained:
    """One trained child, in training order."""

    val: float
    test: float
    feasible: bool
    failed: bool = False


@dataclass
class RunResult:
    problem: str
    method: str
    seed: int
    children: int
    before_first_feasible: int | None
    feasible: int
    best_val: float | None
    best_test: float | None
    anytime: list[float | None]
    seconds: float
    failed: int
    trained: list[dict] = field(default_factory=list)


def load_problem(name: str, epochs: int | None = None) -> dict:
    """``bench/problems/NAME.yaml``; ``epochs`` overrides ``childTraining.epochs`` (smoke tests)."""
    problem = yaml.safe_load((HERE / "problems" / f"{name}.yaml").read_text())
    if epochs is not None:
        problem["spec"].setdefault("childTraining", {})["epochs"] = epochs
    return problem


def make_search(problem: dict, name: str, strategy: str, seed: int, children: int) -> ArchitectureSearch:
    """The problem's search file with this run's name, strategy, seed and a children budget."""
    doc = json.loads(json.dumps(problem))
    doc["metadata"] = {"name": name[:40].rstrip("-")}
    spec = doc["spec"]
    spec["strategy"] = strategy
    spec["seed"] = seed
    per_episode = spec["budget"]["branches"] * spec["budget"]["stepsPerEpisode"]
    spec["budget"]["episodes"] = 4 * math.ceil(children / per_episode) + 2  # cached children are free
    spec["budget"]["maxChildren"] = children
    return parse_search(doc)


def summarise(problem: str, method: str, seed: int, trained: list[Trained], children: int, seconds: float) -> RunResult:
    trained = trained[:children]
    first = next((i for i, t in enumerate(trained) if t.feasible and not t.failed), None)
    ok = [t for t in trained if t.feasible and not t.failed]
    best = max(ok, key=lambda t: t.val, default=None)
    anytime = []
    for fraction in FRACTIONS:
        upto = [t.val for t in trained[: max(1, round(fraction * children))] if t.feasible and not t.failed]
        anytime.append(max(upto) if upto else None)
    return RunResult(
        problem,
        method,
        seed,
        len(trained),
        first,
        len(ok),
        best.val if best else None,
        best.test if best else None,
        anytime,
        round(seconds, 1),
        sum(t.failed for t in trained),
        [asdict(t) for t in trained],
    )


# ---------------------------------------------------------------- the loop's methods


def run_loop(
    problem: dict, method: str, seed: int, children: int, root: pathlib.Path, executor: LocalExecutor
) -> list[Trained]:
    search = make_search(problem, f"{problem['metadata']['name']}-{method}-s{seed}", method, seed, children)
    uri = (root / search.name).as_uri()
    store = open_store(uri)
    SearchLoop(search, store=store, store_uri=uri, executor=executor).run()
    state = store.get_json("state/checkpoint.json")
    history = [ChildRecord.from_json(r) for r in read_history(store, state["history_count"])]
    return [
        Trained(r.val_accuracy, r.test_accuracy, r.feasible, r.status == "failed")
        for r in history
        if r.status != "cached"
    ]


# ---------------------------------------------------------------- methods outside the loop


def sample_layers(space: LayerSpace, choose: Callable[[str, Sequence[Any]], Any], max_depth: int = MAX_DEPTH) -> Arch:
    """A network from the flat conditional space: depth, then per layer its op, the op's fields
    (``OP_FIELDS``, tables from ``field_values``), a skip source or none, and the merge."""
    layers = []
    for i in range(choose("depth", list(range(1, max_depth + 1)))):
        op = choose(f"l{i}.op", list(space.ops))
        params: dict[str, Any] = {"op": op, "src1": i}
        for name in OP_FIELDS[space.name][op]:
            params[name] = choose(f"l{i}.{op}.{name}", list(field_values(space, op, name)))
        skip = choose(f"l{i}.skip", ["none", *[str(j) for j in range(i)]])
        if skip != "none":
            params["src2"] = int(skip)
            params["merge"] = choose(f"l{i}.merge", ["add", "concat"])
        layers.append(Layer(**params))
    return parse_arch(Arch(space=space.name, layers=tuple(layers)))


class Evaluator:
    """Trains given networks as children of one search store, through the same executor and trainer."""

    def __init__(self, search: ArchitectureSearch, root: pathlib.Path, executor: LocalExecutor) -> None:
        self.search = search
        self.spec = search.spec
        self.uri = (root / search.name).as_uri()
        self.store = open_store(self.uri)
        self.executor = executor
        self.training = self.spec.child_training.resolved()
        self.geometry = dataset_geometry(self.spec)
        self.count = 0

    def violations(self, arch: Arch) -> tuple[list[float], bool]:
        reward = compute_reward(1.0, compute_metrics(arch, *self.geometry), list(self.spec.constraints))
        return [reward.violations[c.metric] for c in self.spec.constraints], reward.feasible

    def train(self, archs: list[Arch]) -> list[Trained]:
        runs, ids = [], []
        sharing = self.training.parameter_sharing
        for arch in archs:
            child = f"c{self.count:04d}"
            self.count += 1
            task = ChildTask(
                search=self.search.name,
                child=child,
                arch=arch,
                dataset=self.spec.dataset,
                training=self.training,
                seed=self.spec.seed,
                weights=WEIGHTS_PREFIX if sharing else None,
            )
            self.store.put_bytes(f"children/{child}/arch.json", task.to_json().encode())
            base = join_uri(self.uri, f"children/{child}")
            runs.append(
                ChildRun(
                    self.search.name,
                    child,
                    f"{base}/arch.json",
                    base,
                    join_uri(self.uri, WEIGHTS_PREFIX) if sharing else None,
                    float(self.training.timeout_seconds),
                    0,
                    0,
                    len(ids),
                )
            )
            ids.append(child)
        self.executor.submit(runs)
        out, merged = [], []
        for arch, child in zip(archs, ids):
            feasible = self.violations(arch)[1]
            try:
                result = load_result(self.store.get_bytes(f"children/{child}/result.json"))
            except StoreNotFound:
                out.append(Trained(0.0, 0.0, feasible, failed=True))
                continue
            out.append(Trained(result.val_accuracy, result.test_accuracy, feasible))
            if sharing and self.store.exists(f"children/{child}/weights.safetensors"):
                merged.append((f"children/{child}/weights.safetensors", result.val_accuracy, child))
        if merged:
            merge(self.store, WEIGHTS_PREFIX, merged)
        return out


def run_random_sample(
    problem: dict, seed: int, children: int, root: pathlib.Path, executor: LocalExecutor, batch: int
) -> list[Trained]:
    search = make_search(problem, f"{problem['metadata']['name']}-random-sample-s{seed}", "random", seed, children)
    evaluator = Evaluator(search, root, executor)
    space = get_space(search.spec.search_space)
    rng = random.Random(seed)
    seen: set[str] = set()
    trained: list[Trained] = []
    while len(trained) < children:
        archs = []
        for _ in range(50 * batch):
            arch = sample_layers(space, lambda name, options: rng.choice(options))
            if arch.hash not in seen:
                seen.add(arch.hash)
                archs.append(arch)
            if len(archs) == min(batch, children - len(trained)):
                break
        trained += evaluator.train(archs)
    return trained


def run_optuna(
    problem: dict, seed: int, children: int, root: pathlib.Path, executor: LocalExecutor, batch: int
) -> list[Trained]:
    try:
        import optuna
    except ImportError:
        raise SystemExit("optuna-tpe needs Optuna: pip install -e '.[bench]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    search = make_search(problem, f"{problem['metadata']['name']}-optuna-tpe-s{seed}", "random", seed, children)
    evaluator = Evaluator(search, root, executor)
    space = get_space(search.spec.search_space)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    cache: dict[str, Trained] = {}
    trained: list[Trained] = []
    asks = 0
    while len(trained) < children and asks < 20 * children:
        pending = []
        while len(pending) < min(batch, children - len(trained)) and asks < 20 * children:
            trial = study.ask()
            asks += 1
            arch = sample_layers(space, lambda name, options, t=trial: t.suggest_categorical(name, options))
            constraints, _ = evaluator.violations(arch)
            for i, (constraint, value) in enumerate(zip(search.spec.constraints, constraints)):
                trial.set_constraint(f"{i}.{constraint.metric}", value)  # Optuna 5: feasible when every value ≤ 0
            if arch.hash in cache or any(arch.hash == a.hash for _, a in pending):
                known = cache.get(arch.hash)
                if known is None:  # a duplicate inside this batch: try again after the batch
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(
                        trial,
                        known.val if not known.failed else None,
                        state=None if not known.failed else optuna.trial.TrialState.FAIL,
                    )
                continue
            pending.append((trial, arch))
        results = evaluator.train([a for _, a in pending])
        for (trial, arch), result in zip(pending, results):
            cache[arch.hash] = result
            if result.failed:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, result.val)
        trained += results
    return trained


# ---------------------------------------------------------------- tables


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def problem_table(results: list[RunResult], problem: str, methods: Sequence[str], children: int) -> str:
    """Medians over seeds; a run with no feasible child counts ``children`` before its first feasible one."""
    rows = [
        f"### {problem} ({children} trained children per run)\n",
        "| method | seeds | children before 1st feasible (median; runs with none) | feasible (median) | best feasible val (median) | best feasible test (median) | anytime val 25/50/100 % (median) | seconds (median) | ≤ epnas's best val on seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ours = {r.seed: r for r in results if r.problem == problem and r.method == "epnas"}
    for method in methods:
        runs = [r for r in results if r.problem == problem and r.method == method]
        if not runs:
            continue
        first = [r.before_first_feasible if r.before_first_feasible is not None else children for r in runs]
        none = sum(r.before_first_feasible is None for r in runs)
        anytime = [_fmt(_median([r.anytime[i] or 0.0 for r in runs])) for i in range(len(FRACTIONS))]
        wins = (
            ""
            if method == "epnas"
            else f"{sum((ours[r.seed].best_val or 0) >= (r.best_val or 0) for r in runs if r.seed in ours)}/{len(runs)}"
        )
        rows.append(
            f"| {method} | {len(runs)} | {_median(first):g} ({none}) | {_median([r.feasible for r in runs]):g} | "
            f"{_fmt(_median([r.best_val or 0.0 for r in runs]))} | {_fmt(_median([r.best_test or 0.0 for r in runs]))} | "
            f"{' / '.join(anytime)} | {_median([r.seconds for r in runs]):.0f} | {wins} |"
        )
    per_seed = [
        "",
        "Per seed (children before 1st feasible / feasible / best feasible val):",
        "",
        "| method | "
        + " | ".join(f"seed {s}" for s in sorted({r.seed for r in results if r.problem == problem}))
        + " |",
        "|---|" + "---|" * len({r.seed for r in results if r.problem == problem}),
    ]
    for method in methods:
        runs = sorted((r for r in results if r.problem == problem and r.method == method), key=lambda r: r.seed)
        if runs:
            cells = [
                f"{'none' if r.before_first_feasible is None else r.before_first_feasible} / {r.feasible} / {_fmt(r.best_val)}"
                for r in runs
            ]
            per_seed.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows + per_seed) + "\n"


def targets(results: list[RunResult], problem: str, children: int) -> list[str]:
    """The issue's targets for ``epnas`` on one problem, each with its verdict."""

    def runs(method: str) -> list[RunResult]:
        return [r for r in results if r.problem == problem and r.method == method]

    def first(method: str) -> float | None:
        rs = runs(method)
        return (
            _median([r.before_first_feasible if r.before_first_feasible is not None else children for r in rs])
            if rs
            else None
        )

    def best(method: str) -> float | None:
        rs = runs(method)
        return _median([r.best_val or 0.0 for r in rs]) if rs else None

    lines = []
    ours_first, ours_best = first("epnas"), best("epnas")
    if ours_first is None:
        return lines
    if first("random") is not None:
        lines.append(
            f"- first feasible ≤ ⅓ of progressive random's: {ours_first:g} vs {first('random'):g}/3 → {'met' if ours_first <= first('random') / 3 else 'MISSED'}"
        )
    if first("optuna-tpe") is not None:
        lines.append(
            f"- first feasible ≤ Optuna TPE's: {ours_first:g} vs {first('optuna-tpe'):g} → {'met' if ours_first <= first('optuna-tpe') else 'MISSED'}"
        )
    ours = {r.seed: r for r in runs("epnas")}
    for method in METHODS[1:]:
        other = runs(method)
        if not other:
            continue
        seeds_won = sum((ours[r.seed].best_val or 0) >= (r.best_val or 0) for r in other if r.seed in ours)
        ok = ours_best >= (best(method) or 0) and seeds_won >= len(other) - 1
        lines.append(
            f"- best feasible val vs {method}: median {ours_best:.3f} vs {best(method):.3f}, at least as good on {seeds_won}/{len(other)} seeds → {'met' if ok else 'MISSED'}"
        )
    return lines


# ---------------------------------------------------------------- main


def run_one(
    problem_name: str,
    method: str,
    seed: int,
    children: int,
    root: pathlib.Path,
    executor: LocalExecutor,
    batch: int,
    epochs: int | None = None,
) -> RunResult:
    problem = load_problem(problem_name, epochs)
    started = time.monotonic()
    if method in LOOP_METHODS:
        trained = run_loop(problem, method, seed, children, root, executor)
    elif method == "random-sample":
        trained = run_random_sample(problem, seed, children, root, executor, batch)
    elif method == "optuna-tpe":
        trained = run_optuna(problem, seed, children, root, executor, batch)
    else:
        raise SystemExit(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    return summarise(problem_name, method, seed, trained, children, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--children", type=int, default=36, help="trained children per run")
    parser.add_argument("--parallelism", type=int, default=2, help="children trained at once (every method)")
    parser.add_argument("--out", default="runs/race", help="directory for race.json, race.md and the runs' stores")
    parser.add_argument(
        "--keep-stores", action="store_true", help="keep every run's store (children, weights, history)"
    )
    parser.add_argument("--epochs", type=int, help="override every problem's childTraining.epochs (smoke tests only)")
    args = parser.parse_args(argv)
    problems, methods = args.problems.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = pathlib.Path(args.out).resolve()
    stores = out / "stores"
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "race.json"
    results: list[RunResult] = []
    if results_file.exists():  # a rerun continues: finished runs are kept
        results = [RunResult(**r) for r in json.loads(results_file.read_text())["runs"]]
    done = {(r.problem, r.method, r.seed, r.children) for r in results}
    with LocalExecutor(parallelism=args.parallelism, retries=0) as executor:
        for problem in problems:
            for seed in seeds:
                for method in methods:
                    if (problem, method, seed, args.children) in done:
                        continue
                    root = stores / problem / f"{method}-s{seed}"
                    shutil.rmtree(root, ignore_errors=True)
                    result = run_one(
                        problem, method, seed, args.children, root, executor, args.parallelism, args.epochs
                    )
                    results.append(result)
                    print(
                        f"{problem} {method} seed {seed}: before 1st feasible {result.before_first_feasible}, feasible {result.feasible}, "
                        f"best val {_fmt(result.best_val)}, {result.seconds:.0f} s",
                        flush=True,
                    )
                    results_file.write_text(json.dumps({"runs": [asdict(r) for r in results]}, indent=1))
                    if not args.keep_stores:
                        shutil.rmtree(root, ignore_errors=True)
    report = [f"# Race: {args.children} trained children per run, seeds {args.seeds}, parallelism {args.parallelism}\n"]
    for problem in problems:
        report.append(problem_table(results, problem, methods, args.children))
        report += ["Targets for `epnas`:", *targets(results, problem, args.children), ""]
    (out / "race.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SpecError as err:
        print(f"race: {err}", file=sys.stderr)
        sys.exit(2)
