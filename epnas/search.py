"""The progressive search loop (EPNAS §3.1, Fig. 1): episodes × steps × branches.

Per episode, branch ``n`` starts from seed ``n mod K`` of the seeds the strategy chose.
At each step the strategy (``epnas.strategy``) proposes one child per branch, morphed
from the branch's network; the step's children are handed to the executor as one
batch; rewards come from their ``result.json`` files (EPNAS Eq. 3); the shared weight
dictionary is merged; the loop state is checkpointed.  After the last step the
strategy learns from the episode (REINFORCE for the policy strategies) and picks the
seeds of the next one.

Where children run is the executor's business; the loop only reads and writes the
store.  A network is trained once: a child whose network (``Arch.hash``, of the
canonical form) was evaluated before, or is a sibling's in the same step, is served
that result; a child whose ``result.json`` exists is never trained again.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from epnas.arch import Arch, parse_arch, random_arch
from epnas.checkpoint import (
    CHECKPOINT,
    HISTORY_PREFIX,
    PENDING,
    SUMMARY,
    UPDATES_PREFIX,
    LoopState,
    damaged,
    decode_python_rng,
    decode_torch_rng,
    encode_python_rng,
    encode_torch_rng,
    history_key,
    read_history,
    read_state_json,
)
from epnas.errors import CorruptState, SpecError
from epnas.executors.base import ChildOutcome, ChildRun, Executor, SearchStopped
from epnas.metrics import compute_metrics
from epnas.records import (
    ArchJSON,
    ChildBrief,
    ChildCounts,
    ChildRecord,
    FinalEntry,
    LoopPhase,
    Move,
    PlanItem,
    PlannedMove,
    SearchSummary,
    TrajectoryStep,
    ranked_children,
)
from epnas.reward import compute_reward
from epnas.spec import ArchitectureSearch, dataset_geometry, initial_arch
from epnas.store import Store, StoreNotFound, join_uri
from epnas.strategy import Learning, ProposalContext, Screen, make_strategy, single_thread, top_k_by_reward
from epnas.task import ChildResult, ChildTask, load_result
from epnas.weights import merge

WEIGHTS_PREFIX = "weights/"
CHECKPOINT_KEYS = (
    "episode",
    "step",
    "seeds",
    "history_count",
)  # a checkpoint without these is damaged, not a fresh start
FINAL_PREFIX = "final/"  # final/<child>/{arch.json,result.json,weights.safetensors}: the winners trained again

__all__ = [
    "SearchLoop",
    "SearchFailed",
    "SearchStopped",
    "StepReport",
    "ChildRecord",
    "child_id",
    "summarize",
    "single_thread",
    "top_k",
]


def child_id(episode: int, step: int, index: int) -> str:
    """``e003-s07-c05``: deterministic, so a restarted run finds the same children."""
    return f"e{episode:03d}-s{step:02d}-c{index:02d}"


top_k = top_k_by_reward


class SearchFailed(Exception):
    """The failure budget is spent (``budget.maxFailedChildren``, or every child of a step
    failed): the step is committed, the summary reads ``Failed`` with this reason, and a
    rerun with a larger budget continues from the checkpoint."""


@dataclass
class StepReport:
    """What a step did, for progress displays."""

    episode: int
    step: int
    records: list[ChildRecord]
    summary: SearchSummary


class SearchLoop:
    """Runs one ``ArchitectureSearch`` to completion against ``store`` (rooted at the search's own
    directory, ``store_uri``) with children trained by ``executor``."""

    def __init__(
        self,
        search: ArchitectureSearch,
        *,
        store: Store,
        store_uri: str,
        executor: Executor,
        on_step: Callable[[StepReport], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ):
        self.search = search
        self.spec = search.spec
        self.store = store
        self.store_uri = store_uri
        self.executor = executor
        self.on_step = on_step or (lambda report: None)
        self.should_stop = should_stop
        self.last_update: dict | None = None
        self.geometry = dataset_geometry(self.spec)
        self.steps = self.spec.steps_per_episode
        self.training = self.spec.child_training.resolved()
        self.strategy = make_strategy(self.spec)
        self.screen = Screen.for_spec(self.spec)

    # ------------------------------------------------------------ state

    def load_state(self) -> tuple[LoopState, list[ChildRecord]]:
        """The last checkpoint and the history it covers, or a fresh start."""
        try:
            raw = read_state_json(self.store, CHECKPOINT)
        except StoreNotFound:
            return self.fresh_state(), []
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(raw, dict) or k not in raw]
        if missing:
            raise CorruptState(damaged(self.store, CHECKPOINT, f"no {', '.join(missing)}"))
        try:
            state = LoopState.from_json(raw)
        except TypeError as err:
            raise CorruptState(damaged(self.store, CHECKPOINT, str(err))) from None
        records = read_history(self.store, state.history_count)
        if len(records) < state.history_count:
            raise CorruptState(
                damaged(
                    self.store,
                    HISTORY_PREFIX.rstrip("/"),
                    f"{len(records)} child records, the checkpoint counts {state.history_count}",
                )
            )
        try:
            history = [ChildRecord.from_json(r) for r in records]
        except TypeError as err:
            raise CorruptState(
                damaged(self.store, HISTORY_PREFIX.rstrip("/"), f"a record does not read: {err}")
            ) from None
        if state.policy_file:
            self.strategy.load(self.store, state.policy_file)
        return state, history

    def fresh_state(self) -> LoopState:
        rng = random.Random(self.spec.seed)
        start = initial_arch(self.spec)
        if start is None:
            random_start = self.spec.initial_architecture.random
            assert random_start is not None  # the spec holds exactly one of random and architecture
            start = random_arch(self.spec.search_space, random_start.depth, rng)
        generator = torch.Generator().manual_seed(self.spec.seed)
        return LoopState(
            seeds=[_arch_json(start)], python_rng=encode_python_rng(rng), torch_rng=encode_torch_rng(generator)
        )

    def _get_json(self, key: str, default: Any) -> Any:
        try:
            return read_state_json(self.store, key)
        except StoreNotFound:
            return default

    def _result_at(self, key: str) -> ChildResult | None:
        """The child result at ``key``; ``None`` when absent; ``CorruptState`` naming it when damaged."""
        try:
            return load_result(self.store.get_bytes(key))
        except StoreNotFound:
            return None
        except SpecError as err:
            raise CorruptState(damaged(self.store, key, str(err).splitlines()[0])) from None

    def _commit(
        self,
        state: LoopState,
        history: list[ChildRecord],
        phase: LoopPhase,
        step_records: Sequence[ChildRecord] = (),
        reason: str | None = None,
        final: list[FinalEntry] | None = None,
    ) -> SearchSummary:
        """The step's history and the summary first, the checkpoint last: its presence commits the step."""
        if step_records:
            self.store.put_json(
                history_key(step_records[0].episode, step_records[0].step), [asdict(r) for r in step_records]
            )
        state.history_count = len(history)
        summary = summarize(self.search, state, history, phase, self.steps, self.store_uri)
        if reason:
            summary["reason"] = reason
        if final:
            summary["final"] = final
            done = [f for f in final if f["status"] == "succeeded"]
            summary["finalModel"] = max(done, key=lambda f: f["valAccuracy"], default=None)
        self.store.put_json(SUMMARY, summary)
        self.store.put_json(CHECKPOINT, state.to_json())
        return summary

    # ------------------------------------------------------------ loop

    def run(self) -> SearchSummary:
        """Run (or resume) to the end of the budget; returns the final summary.

        The budget is ``episodes`` × ``stepsPerEpisode`` steps, cut short between steps once
        ``budget.maxChildren`` children were trained.  Raises ``SearchStopped`` when
        ``should_stop()`` is true before a step.
        """
        state, history = self.load_state()
        while state.episode < self.spec.budget.episodes and not self._spent(history):
            if state.branches is None:
                self._start_episode(state)
            while state.step < self.steps and not self._spent(history):
                if self.should_stop():
                    raise SearchStopped(self.search.name)
                records = self._run_step(state, history)
                failure = self._failure(records, history)
                summary = self._commit(state, history, "Failed" if failure else "Running", records, reason=failure)
                self.on_step(StepReport(state.episode, state.step - 1, records, summary))
                if failure:
                    raise SearchFailed(failure)
            if self._spent(history):
                break
            self._end_episode(state, history)
            self._commit(state, history, "Running")
        final = self._final_training(history)
        failed = [f for f in final if f["status"] == "failed"]
        if final and len(failed) == len(final):
            reason = f"final training failed for every child; first: {failed[0]['child']}: {failed[0]['reason']}"
            self._commit(state, history, "Failed", reason=reason, final=final)
            raise SearchFailed(reason)
        return self._commit(state, history, "Succeeded", final=final)

    # ------------------------------------------------------------ final training

    def _final_training(self, history: list[ChildRecord]) -> list[FinalEntry]:
        """Train the ``finalTraining.top`` best feasible children again from scratch under
        ``finalTraining``'s regime, into ``final/<child>/``; a result already there (same
        architecture) is kept, so a resumed search trains none twice.  One entry per winner."""
        final = self.spec.final_training
        if not final.top:
            return []
        training = final.child_training()
        winners = [r for r in ranked_children(history) if r.feasible][: final.top]
        runs, entries = [], []
        for index, record in enumerate(winners):
            arch = parse_arch(record.arch)
            out_dir = f"{FINAL_PREFIX}{record.child}"
            task = ChildTask(
                search=self.search.name,
                child=f"final-{record.child}",
                arch=arch,
                dataset=self.spec.dataset,
                training=training,
                seed=self.spec.seed,
                weights=None,
                parent=record.child,
                out_dir=out_dir,
            )
            if not self.store.exists(f"{out_dir}/arch.json"):
                self.store.put_bytes(f"{out_dir}/arch.json", task.to_json().encode())
            entries.append((record, out_dir))
            if self._final_result(out_dir, arch.hash) is None:
                base = join_uri(self.store_uri, out_dir)
                runs.append(
                    ChildRun(
                        self.search.name,
                        task.child,
                        f"{base}/arch.json",
                        base,
                        None,
                        float(training.timeout_seconds),
                        self.spec.budget.episodes,
                        0,
                        index,
                    )
                )
        outcomes = {o.child: o for o in self.executor.submit(runs)} if runs else {}
        out: list[FinalEntry] = []
        for record, out_dir in entries:
            result = self._final_result(out_dir, parse_arch(record.arch).hash)
            entry = FinalEntry(
                child=record.child,
                dir=out_dir,
                uri=join_uri(self.store_uri, out_dir),
                searchValAccuracy=record.val_accuracy,
                metrics=record.metrics,
                status="failed" if result is None else "succeeded",
            )
            if result is None:
                entry["reason"] = outcome_reason(outcomes.get(f"final-{record.child}"))
            else:
                entry["valAccuracy"] = result.val_accuracy
                entry["testAccuracy"] = result.test_accuracy
                entry["epochsRun"] = result.epochs_run
                entry["trainSeconds"] = result.train_seconds
            out.append(entry)
        return out

    def _final_result(self, out_dir: str, arch_hash: str) -> ChildResult | None:
        result = self._result_at(f"{out_dir}/result.json")
        return result if result is not None and result.arch_hash == arch_hash else None

    def _failure(self, records: list[ChildRecord], history: list[ChildRecord]) -> str | None:
        """Why the search must end Failed after this step, or ``None``."""
        limit = self.spec.budget.max_failed_children
        failed = [r for r in history if r.status == "failed"]
        if limit is not None and len(failed) > limit:
            return f"{len(failed)} children failed, more than budget.maxFailedChildren ({limit}); last: {failed[-1].child}: {failed[-1].reason}"
        if limit is None and records and all(r.status == "failed" for r in records):
            return f"every child of episode {records[0].episode} step {records[0].step} failed; first: {records[0].child}: {records[0].reason}"
        return None

    def _spent(self, history: list[ChildRecord]) -> bool:
        """``budget.maxChildren`` children trained (succeeded or failed; cached ones are free)."""
        limit = self.spec.budget.max_children
        return limit is not None and trained_count(history) >= limit

    def _start_episode(self, state: LoopState) -> None:
        n = self.spec.budget.branches
        state.branches = [state.seeds[b % len(state.seeds)] for b in range(n)]
        state.trajectory = [[] for _ in range(n)]
        state.step = 0

    def _sample(self, state: LoopState, history: list[ChildRecord]) -> list[PlanItem]:
        """One proposal per branch from the strategy; the plan is stored before any child starts,
        so a restarted run trains exactly the same children."""
        pending = self._get_json(PENDING, None)
        if pending and pending["episode"] == state.episode and pending["step"] == state.step:
            state.python_rng, state.torch_rng = pending["python_rng"], pending["torch_rng"]
            try:
                return [PlanItem.from_json(item) for item in pending["children"]]
            except (KeyError, TypeError) as err:
                raise CorruptState(damaged(self.store, PENDING, f"a planned child does not read: {err!r}")) from None
        branches, python_rng, torch_rng = state.branches, state.python_rng, state.torch_rng
        assert branches is not None and python_rng is not None and torch_rng is not None  # fresh_state, _start_episode
        context = ProposalContext(
            screen=self.screen,
            seen={r.hash for r in history},
            rng=decode_python_rng(python_rng),
            generator=decode_torch_rng(torch_rng),
            history=history,
        )
        proposals = self.strategy.propose([parse_arch(a) for a in branches], context)
        plan = [
            PlanItem(
                child=child_id(state.episode, state.step, b),
                parent_arch=arch_data,
                arch=_arch_json(proposal.arch),
                moves=tuple(
                    PlannedMove(_arch_json(m.parent), m.action.to_dict(), m.result.applied, m.result.degraded)
                    for m in proposal.morphs
                ),
            )
            for b, (arch_data, proposal) in enumerate(zip(branches, proposals))
        ]
        state.python_rng = encode_python_rng(context.rng)
        state.torch_rng = encode_torch_rng(context.generator)
        pending = {
            "episode": state.episode,
            "step": state.step,
            "children": [item.to_json() for item in plan],
            "python_rng": state.python_rng,
            "torch_rng": state.torch_rng,
        }
        self.store.put_json(PENDING, pending)
        return plan

    def _run_step(self, state: LoopState, history: list[ChildRecord]) -> list[ChildRecord]:
        plan = self._sample(state, history)
        evaluated = {r.hash: r.child for r in history if r.status in ("succeeded", "cached")}
        runs: list[ChildRun] = []
        siblings: dict[str, str] = {}  # child → the sibling trained for the same network this step
        hashes = [parse_arch(item.arch).hash for item in plan]
        for b, item in enumerate(plan):
            arch = parse_arch(item.arch)
            key = f"children/{item.child}"
            if not self.store.exists(f"{key}/arch.json"):
                self.store.put_bytes(f"{key}/arch.json", self._task(item, arch).to_json().encode())
            if self.store.exists(f"{key}/result.json"):
                continue
            if hashes[b] in evaluated:
                self._write_cached_result(item.child, evaluated[hashes[b]])
                continue
            first = hashes.index(hashes[b])
            if first < b:
                siblings[item.child] = plan[first].child
                continue
            runs.append(self._child_run(item.child, state, b))
        outcomes = {o.child: o for o in self.executor.submit(runs)}
        for child, sibling in siblings.items():
            if self._read_result(sibling) is not None:
                self._write_cached_result(child, sibling)
            elif sibling in outcomes:
                outcomes[child] = outcomes[sibling]
        records = [self._record(state, b, item, outcomes.get(item.child)) for b, item in enumerate(plan)]
        self._merge_weights(records, outcomes)
        branches = state.branches
        assert branches is not None  # _start_episode set them
        for b, record in enumerate(records):
            moves = tuple(Move(m.arch, m.action) for m in plan[b].moves)
            state.trajectory[b].append(TrajectoryStep(moves, record.reward))
            if record.status != "failed":
                branches[b] = record.arch
        history.extend(records)
        state.step += 1
        return records

    def _task(self, item: PlanItem, arch: Arch) -> ChildTask:
        return ChildTask(
            search=self.search.name,
            child=item.child,
            arch=arch,
            dataset=self.spec.dataset,
            training=self.training,
            seed=self.spec.seed,
            weights=WEIGHTS_PREFIX if self.training.parameter_sharing else None,
        )

    def _child_run(self, child: str, state: LoopState, index: int) -> ChildRun:
        base = join_uri(self.store_uri, f"children/{child}")
        return ChildRun(
            search=self.search.name,
            child=child,
            arch_uri=f"{base}/arch.json",
            out_uri=base,
            weights_uri=join_uri(self.store_uri, WEIGHTS_PREFIX) if self.training.parameter_sharing else None,
            timeout_s=float(self.training.timeout_seconds),
            episode=state.episode,
            step=state.step,
            index=index,
        )

    def _write_cached_result(self, child: str, earlier: str) -> None:
        """The same network was already trained (by ``earlier``): its result stands for this child too."""
        result = self._result_at(f"children/{earlier}/result.json")
        if result is None:
            raise CorruptState(
                damaged(self.store, f"children/{earlier}/result.json", "missing, but the history says it was trained")
            )
        note = f"cached: same architecture as {earlier}"
        cached = result.model_copy(
            update={"child": child, "warnings": [*result.warnings, note], "cached_from": result.cached_from or earlier}
        )
        self.store.put_bytes(f"children/{child}/result.json", cached.to_json().encode())

    def _record(self, state: LoopState, b: int, item: PlanItem, outcome: ChildOutcome | None) -> ChildRecord:
        arch = parse_arch(item.arch)
        metrics = compute_metrics(arch, self.geometry[0], self.geometry[1])
        record = ChildRecord(
            child=item.child,
            episode=state.episode,
            step=state.step,
            branch=b,
            parent=_parent_name(state, b),
            hash=arch.hash,
            arch=item.arch,
            action=item.action,
            applied=item.applied,
            degraded=item.degraded,
            status="failed",
            metrics=metrics.as_dict(),
            moves=[m.record() for m in item.moves],
            parent_hash=parse_arch(item.parent_arch).hash,
        )
        result = self._read_result(item.child)
        if result is not None and result.arch_hash != arch.hash:
            record.reason = f"children/{item.child}/result.json is for architecture {result.arch_hash}, not {arch.hash}"
            result = None
        if result is None:
            record.exit_code = outcome.exit_code if outcome else None
            record.reason = record.reason or outcome_reason(outcome)
            reward = compute_reward(0.0, metrics, self.spec.constraints)
            record.violations, record.feasible = reward.violations, reward.feasible
            return record
        reward = compute_reward(result.val_accuracy, metrics, self.spec.constraints)
        record.status = "cached" if result.cached_from else "succeeded"
        record.cached_from = result.cached_from
        record.val_accuracy, record.test_accuracy = result.val_accuracy, result.test_accuracy
        record.reward, record.feasible, record.violations = reward.reward, reward.feasible, reward.violations
        record.exit_code, record.train_seconds = 0, result.train_seconds
        return record

    def _read_result(self, child: str) -> ChildResult | None:
        return self._result_at(f"children/{child}/result.json")

    def _merge_weights(self, records: list[ChildRecord], outcomes: dict[str, ChildOutcome]) -> None:
        if not self.training.parameter_sharing:
            return
        trained = [
            (f"children/{r.child}/weights.safetensors", r.val_accuracy, r.child)
            for r in records
            if r.status == "succeeded" and self.store.exists(f"children/{r.child}/weights.safetensors")
        ]
        if trained:
            merge(self.store, WEIGHTS_PREFIX, trained)

    def _end_episode(self, state: LoopState, history: list[ChildRecord]) -> None:
        trajectory = state.trajectory
        learning = self.strategy.learn(trajectory, state.baselines or []) if trajectory and trajectory[0] else None
        if learning is not None:
            self._save_learning(state, learning)
        state.seeds = self.strategy.seeds(history, state.episode, self.spec.budget.top_k, fallback=state.seeds)
        state.episode += 1
        state.step = 0
        state.branches = None
        state.trajectory = []

    def _save_learning(self, state: LoopState, learning: Learning) -> None:
        self.last_update = learning.update
        state.baselines = learning.baselines
        self.store.put_json(f"{UPDATES_PREFIX}e{state.episode:03d}.json", {"episode": state.episode, **learning.update})
        key = f"state/policy-e{state.episode:03d}.safetensors"
        if self.strategy.save(self.store, key):
            state.policy_file = key


def outcome_reason(outcome: ChildOutcome | None) -> str:
    """``"Error: RuntimeError: boom"``: the executor's reason and the last line the trainer wrote."""
    if outcome is None:
        return "no result"
    lines = outcome.stderr_tail.strip().splitlines()
    return f"{outcome.reason}: {lines[-1]}" if lines else outcome.reason


def _arch_json(arch: Arch) -> ArchJSON:
    return arch.model_dump(mode="json", exclude_none=True)


def trained_count(history: list[ChildRecord]) -> int:
    """Children handed to an executor: succeeded or failed, not served from cache."""
    return sum(r.status != "cached" for r in history)


def _parent_name(state: LoopState, branch: int) -> str:
    if state.step == 0:
        return "seed"
    return child_id(state.episode, state.step - 1, branch)


def _brief(record: ChildRecord | None) -> ChildBrief | None:
    if record is None:
        return None
    return ChildBrief(
        child=record.child,
        hash=record.hash,
        valAccuracy=record.val_accuracy,
        testAccuracy=record.test_accuracy,
        reward=record.reward,
        feasible=record.feasible,
        metrics=record.metrics,
        arch=record.arch,
    )


def position_text(summary: SearchSummary) -> str:
    """Where a search stands, in the words ``epnas status`` and the cluster status share:
    ``finished after 3 episodes`` or ``episode 2/3 (1 of 3 steps done)``."""
    if summary["phase"] == "Succeeded":
        return f"finished after {summary['episode']} episode{'s' * (summary['episode'] != 1)}"
    return f"episode {summary['episode'] + 1}/{summary['episodes']} ({summary['step']} of {summary['stepsPerEpisode']} steps done)"


def summarize(
    search: ArchitectureSearch,
    state: LoopState,
    history: list[ChildRecord],
    phase: LoopPhase,
    steps: int,
    store_uri: str,
) -> SearchSummary:
    """The search at a glance: progress, counts, the best and the best feasible child."""
    done = [r for r in history if r.status != "failed"]
    feasible = [r for r in done if r.feasible]
    best = max(done, key=lambda r: (r.reward, r.val_accuracy), default=None)
    best_feasible = max(feasible, key=lambda r: (r.val_accuracy, r.reward), default=None)
    return SearchSummary(
        search=search.name,
        phase=phase,
        episode=state.episode,
        step=state.step,
        episodes=search.spec.budget.episodes,
        stepsPerEpisode=steps,
        plannedChildren=search.spec.budget.episodes * steps * search.spec.budget.branches,
        children=ChildCounts(
            total=len(history),
            succeeded=sum(r.status == "succeeded" for r in history),
            cached=sum(r.status == "cached" for r in history),
            failed=sum(r.status == "failed" for r in history),
            trained=trained_count(history),
        ),
        feasibleCount=len(feasible),
        best=_brief(best),
        bestFeasible=_brief(best_feasible),
        store=store_uri,
    )
