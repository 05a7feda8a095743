"""The search loop with an in-process toy executor: budget, hash cache, failures, crash and resume.

The toy executor "trains" a child by writing a ``result.json`` whose accuracy is a
known function of the architecture, so these tests exercise the loop alone.
"""

from __future__ import annotations

import pytest
import yaml

from epnas.arch import parse_arch
from epnas.checkpoint import CHECKPOINT, SUMMARY, read_history
from epnas.executors.base import ChildOutcome, ChildRun
from epnas.search import SearchFailed, SearchLoop
from epnas.spec import parse_search
from epnas.store import open_store, split_uri
from epnas.task import ChildResult, load_result, load_task


def toy_accuracy(arch) -> float:
    """More conv layers are better, up to 4."""
    convs = sum(layer.op in ("conv2d", "dep-sep-conv2d") for layer in arch.layers)
    return min(convs, 4) / 4 * 0.9 + 0.05


class ToyExecutor:
    """Writes each child's result in-process; fails children listed in ``fail``; can crash after ``crash_after`` runs."""

    def __init__(self, fail: set[str] = frozenset(), crash_after: int | None = None):
        self.trained: list[str] = []
        self.fail = fail
        self.crash_after = crash_after

    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        outcomes = []
        for run in runs:
            if self.crash_after is not None and len(self.trained) >= self.crash_after:
                raise KeyboardInterrupt("simulated crash in the middle of a step")
            if run.child in self.fail:
                outcomes.append(ChildOutcome(run.child, 1, "Error", "Traceback...\nRuntimeError: boom"))
                continue
            root, key = split_uri(run.arch_uri)
            task = load_task(open_store(root).get_bytes(key))
            result = ChildResult(
                child=run.child,
                arch_hash=task.arch.hash,
                val_accuracy=toy_accuracy(task.arch),
                test_accuracy=0.5,
                train_seconds=0.0,
                epochs_run=1,
            )
            open_store(run.out_uri).put_bytes("result.json", result.to_json().encode())
            self.trained.append(run.child)
            outcomes.append(ChildOutcome(run.child, 0, "Completed"))
        return outcomes


def search_doc(strategy: str = "epnas", seed: int = 1, episodes: int = 2, steps: int = 2, branches: int = 3):
    return parse_search(
        yaml.safe_load(
            f"""
apiVersion: epnas.io/v1alpha1
kind: ArchitectureSearch
metadata: {{name: toy}}
spec:
  strategy: {strategy}
  seed: {seed}
  initialArchitecture: {{random: {{depth: 2}}}}
  dataset: {{kind: synthetic, inputShape: [1, 8, 8], numClasses: 4}}
  constraints: [{{metric: modelSize, max: 50000}}]
  budget: {{episodes: {episodes}, stepsPerEpisode: {steps}, branches: {branches}, topK: 2}}
  childTraining: {{parameterSharing: false, epochs: 1}}
"""
        )
    )


def run(tmp_path, executor, doc=None):
    uri = (tmp_path / "store").as_uri()
    store = open_store(uri)
    summary = SearchLoop(doc or search_doc(), store=store, store_uri=uri, executor=executor).run()
    return store, summary


def test_runs_the_whole_budget_and_records_every_child(tmp_path) -> None:
    executor = ToyExecutor()
    store, summary = run(tmp_path, executor)
    history = read_history(store, 10**6)
    assert [r["child"] for r in history] == [
        f"e{e:03d}-s{s:02d}-c{c:02d}" for e in range(2) for s in range(2) for c in range(3)
    ]
    assert summary["phase"] == "Succeeded" and store.get_json(SUMMARY) == summary
    assert store.get_json(CHECKPOINT)["episode"] == 2
    assert summary["children"]["total"] == 12 and summary["children"]["failed"] == 0
    for r in history:
        assert (
            r["reward"] == pytest.approx(toy_accuracy(parse_arch(r["arch"])))
            if r["feasible"]
            else r["reward"] < r["val_accuracy"]
        )
        assert store.exists(f"children/{r['child']}/arch.json") and store.exists(f"children/{r['child']}/result.json")
    assert store.exists(store.get_json(CHECKPOINT)["policy_file"])
    # every child is one morph of its branch's previous architecture
    assert all(
        r["parent"] == ("seed" if r["step"] == 0 else f"e{r['episode']:03d}-s{r['step'] - 1:02d}-c{r['branch']:02d}")
        for r in history
    )


def test_already_evaluated_architectures_are_not_retrained(tmp_path) -> None:
    executor = ToyExecutor()
    store, summary = run(tmp_path, executor, search_doc(strategy="random", seed=3, episodes=3, steps=3, branches=4))
    history = read_history(store, 10**6)
    cached = [r for r in history if r["status"] == "cached"]
    assert cached, "seed 3 repeats an architecture; the cache should have served it"
    trained_hashes = [r["hash"] for r in history if r["status"] == "succeeded"]
    assert len(trained_hashes) == len(set(trained_hashes)) == len(executor.trained)
    assert all(r["hash"] in trained_hashes for r in cached)


def test_a_failed_child_gets_reward_zero_and_its_branch_keeps_the_parent(tmp_path) -> None:
    executor = ToyExecutor(fail={"e000-s00-c01"})
    store, summary = run(tmp_path, executor)
    history = {r["child"]: r for r in read_history(store, 10**6)}
    failed = history["e000-s00-c01"]
    assert failed["status"] == "failed" and failed["reward"] == 0 and failed["exit_code"] == 1
    assert "RuntimeError: boom" in failed["reason"]
    assert summary["children"]["failed"] == 1
    # the branch keeps the failed child's parent: the next child of branch 1 is morphed from it
    nxt = history["e000-s01-c01"]
    assert nxt["parent"] == "e000-s00-c01" and nxt["parent_hash"] == failed["parent_hash"] != failed["hash"]
    assert history["e000-s01-c00"]["parent_hash"] == history["e000-s00-c00"]["hash"]  # a branch that succeeded moves on


def test_identical_siblings_are_trained_once_and_share_the_result(tmp_path) -> None:
    executor = ToyExecutor()
    uri = (tmp_path / "store").as_uri()
    store = open_store(uri)
    loop = SearchLoop(search_doc(episodes=1, steps=1, branches=3), store=store, store_uri=uri, executor=executor)
    loop.strategy = SameChildStrategy(loop.strategy)
    summary = loop.run()
    history = read_history(store, 10**6)
    assert executor.trained == ["e000-s00-c00"]  # one network, trained once
    assert [r["status"] for r in history] == ["succeeded", "cached", "cached"]
    assert [r["cached_from"] for r in history] == [None, "e000-s00-c00", "e000-s00-c00"]
    assert len({r["val_accuracy"] for r in history}) == 1 and summary["children"]["trained"] == 1
    assert load_result(store.get_bytes("children/e000-s00-c02/result.json")).cached_from == "e000-s00-c00"


def test_a_result_for_another_architecture_is_refused(tmp_path) -> None:
    class Misfiling(ToyExecutor):
        def submit(self, runs):
            outcomes = super().submit(runs)
            if runs and runs[0].child == "e000-s00-c00":  # c01's result.json replaced by c00's
                store = open_store(runs[0].out_uri.rsplit("/", 1)[0])
                store.put_bytes("e000-s00-c01/result.json", store.get_bytes("e000-s00-c00/result.json"))
            return outcomes

    store, summary = run(tmp_path, Misfiling(), search_doc(episodes=1, steps=1, branches=2))
    history = {r["child"]: r for r in read_history(store, 10**6)}
    assert history["e000-s00-c00"]["status"] == "succeeded"
    assert history["e000-s00-c01"]["status"] == "failed"
    assert (
        "is for architecture" in history["e000-s00-c01"]["reason"]
        and history["e000-s00-c00"]["hash"] in history["e000-s00-c01"]["reason"]
    )


class SameChildStrategy:
    """Wraps a strategy so that every branch proposes branch 0's child (siblings made identical)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name

    def propose(self, parents, context):
        first = self.inner.propose(parents[:1], context)[0]
        return [first] * len(parents)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_crash_mid_step_resumes_with_no_child_trained_twice(tmp_path) -> None:
    reference = ToyExecutor()
    ref_store, _ = run(tmp_path / "ref", reference)
    first = ToyExecutor(crash_after=4)  # dies after the 4th child: in the middle of step 1
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crash", first)
    second = ToyExecutor()
    store, summary = run(tmp_path / "crash", second)
    assert summary["phase"] == "Succeeded"
    assert sorted(first.trained + second.trained) == sorted(reference.trained)
    assert not set(first.trained) & set(second.trained)

    def strip(records: list[dict]) -> list[tuple]:
        return [(r["child"], r["hash"], r["reward"]) for r in records]

    assert strip(read_history(store, 10**6)) == strip(read_history(ref_store, 10**6))


def test_a_step_where_every_child_failed_ends_the_search_failed(tmp_path) -> None:
    executor = ToyExecutor(fail={f"e000-s00-c{c:02d}" for c in range(3)})
    uri = (tmp_path / "store").as_uri()
    store = open_store(uri)
    with pytest.raises(
        SearchFailed, match="every child of episode 0 step 0 failed; first: e000-s00-c00: Error: RuntimeError: boom"
    ):
        SearchLoop(search_doc(), store=store, store_uri=uri, executor=executor).run()
    summary = store.get_json(SUMMARY)
    assert summary["phase"] == "Failed" and "every child" in summary["reason"]
    assert store.get_json(CHECKPOINT)["step"] == 1  # the failed step is committed: a rerun goes on after it


def test_the_failure_budget(tmp_path) -> None:
    doc = search_doc()
    spec = doc.spec.model_copy(update={"budget": doc.spec.budget.model_copy(update={"max_failed_children": 1})})
    doc = doc.model_copy(update={"spec": spec})
    executor = ToyExecutor(fail={"e000-s00-c01", "e000-s01-c02"})
    uri = (tmp_path / "store").as_uri()
    with pytest.raises(
        SearchFailed, match=r"2 children failed, more than budget.maxFailedChildren \(1\); last: e000-s01-c02"
    ):
        SearchLoop(doc, store=open_store(uri), store_uri=uri, executor=executor).run()
    assert len(executor.trained) == 4  # two steps of three, two failed; nothing after
    # one failure is within the budget
    _, summary = run(tmp_path / "one", ToyExecutor(fail={"e000-s00-c01"}), doc)
    assert summary["phase"] == "Succeeded" and summary["children"]["failed"] == 1


def with_final(doc, **final):
    data = doc.model_dump(mode="json", by_alias=True)
    data["spec"]["finalTraining"] = final
    return parse_search(data)


def test_final_training_retrains_the_best_feasible_children_from_scratch_once(tmp_path) -> None:
    executor = ToyExecutor()
    store, summary = run(tmp_path, executor, with_final(search_doc(), top=2, epochs=7))
    records = read_history(store, 10**9)
    feasible = sorted(
        (r for r in records if r["feasible"] and r["status"] != "failed"),
        key=lambda r: (-r["val_accuracy"], r["child"]),
    )
    winners = []
    for r in feasible:
        if r["hash"] not in [w["hash"] for w in winners]:
            winners.append(r)
    winners = winners[:2]
    assert [f["child"] for f in summary["final"]] == [w["child"] for w in winners]
    assert executor.trained[-2:] == [f"final-{w['child']}" for w in winners]
    for entry, winner in zip(summary["final"], winners):
        assert entry["status"] == "succeeded" and entry["dir"] == f"final/{winner['child']}"
        task = load_task(store.get_bytes(f"final/{winner['child']}/arch.json"))
        assert task.training.regime == "standard" and task.training.epochs == 7 and task.training.lr == 0.05
        assert task.weights is None and not task.training.parameter_sharing and task.parent == winner["child"]
        assert task.arch.hash == winner["hash"] and task.out_dir == f"final/{winner['child']}"
        assert load_result(store.get_bytes(f"final/{winner['child']}/result.json")).arch_hash == winner["hash"]
    assert summary["finalModel"]["child"] == summary["final"][0]["child"]
    assert store.get_json(SUMMARY)["finalModel"] == summary["finalModel"]
    # run again: nothing is trained twice
    before = list(executor.trained)
    _, again = run(tmp_path, executor, with_final(search_doc(), top=2, epochs=7))
    assert executor.trained == before and again["final"] == summary["final"]


def test_final_training_that_fails_for_every_child_fails_the_search(tmp_path) -> None:
    executor = ToyExecutor()
    store, summary = run(tmp_path, executor)  # the search first, without final training
    assert "final" not in summary
    best = summary["bestFeasible"]["child"]
    executor.fail = {f"final-{best}"}
    with pytest.raises(SearchFailed, match=f"final training failed for every child; first: {best}"):
        run(tmp_path, executor, with_final(search_doc(), top=1))
    summary = store.get_json(SUMMARY)
    assert (
        summary["phase"] == "Failed"
        and summary["final"][0]["status"] == "failed"
        and "boom" in summary["final"][0]["reason"]
    )
    assert summary["finalModel"] is None
