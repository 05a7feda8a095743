"""Search strategies: what the loop asks for a step's children, and how they learn from rewards.

A ``Strategy`` proposes one child per branch (``propose``), learns from an episode's
rewards (``learn``), picks the networks that seed the next episode (``seeds``) and keeps
its own state in the store (``save`` / ``load``).  The loop knows nothing else of it.

* ``epnas-paper`` (``PaperStrategy``): EPNAS exactly (§3.1–3.2): one action per branch
  sampled from π_θ, REINFORCE after each episode, the episode's top-K by reward
  ``r = P · Π p_i^V_i`` seed the next one.
* ``random`` (``RandomStrategy``): the papers' baseline — every choice uniform, same loop,
  same seeding as the paper.
* ``epnas`` (``EpnasStrategy``, the default): the paper's policy and update, plus what the
  paper leaves unused: resource metrics are analytic, so whether a child satisfies the
  constraints is known **before** it is trained, at no cost.

  - *Screening*: per branch, ``C = screening.candidates`` actions are sampled from π_θ and
    applied; among the networks that are feasible and new — not in the history, not a
    sibling of this step — ``pick`` takes the one a surrogate of accuracy ranks first
    (``epnas.surrogate``: Bayesian linear regression on analytic features, prior "more
    FLOPs, more accuracy", fitted to the search's trained children, one Thompson draw
    per branch and morph).  When none is feasible and new, the walk goes on from the
    best candidate (highest penalty factor ``Π p_i^V_i``, new before known, first among
    equals), up to ``screening.maxMorphs`` morphs.  The child is the walk's last
    network; its ``log π`` is the sum over its morphs, so REINFORCE is unchanged.
  - *Seeding*: the next episode starts from the best ``K`` networks of the whole search,
    feasible ones first by validation accuracy, then infeasible ones by reward — the
    paper's top-K by reward lets an accurate infeasible network (0.89 · 0.9^V) outrank
    a feasible one and keeps searching where nothing can be shipped.

Everything but ``save``/``load`` is pure given its random generators.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from epnas import reinforce, surrogate
from epnas.arch import Arch, parse_arch
from epnas.checkpoint import load_policy, save_policy
from epnas.metrics import Metrics, compute_metrics
from epnas.morph import Action, MorphResult, apply_action, random_action
from epnas.policy import Policy, make_optimizer
from epnas.records import ArchJSON, ChildRecord, TrajectoryStep
from epnas.reward import compute_reward
from epnas.space import get_space
from epnas.spec import Constraint, SearchSpec, dataset_geometry
from epnas.store import Store

Shape = tuple[int, int, int]


# ---------------------------------------------------------------- zero-cost screening


@dataclass(frozen=True)
class Screen:
    """Constraint check without training: ``factor = Π p_i^V_i`` (EPNAS Eq. 3 with P = 1)."""

    constraints: tuple[Constraint, ...]
    input_shape: Shape
    classes: int

    @classmethod
    def for_spec(cls, spec: SearchSpec) -> Screen:
        shape, classes = dataset_geometry(spec)
        return cls(tuple(spec.constraints), shape, classes)

    def factor(self, arch: Arch) -> tuple[float, bool]:
        """``(Π p_i^V_i, every constraint holds)`` of ``arch`` on the search's input."""
        factor, feasible, _ = self.assess(arch)
        return factor, feasible

    def assess(self, arch: Arch) -> tuple[float, bool, Metrics]:
        """``factor`` and feasibility as ``factor`` says, with the metrics they came from."""
        metrics = compute_metrics(arch, self.input_shape, self.classes)
        reward = compute_reward(1.0, metrics, list(self.constraints))
        return reward.reward, reward.feasible, metrics


@dataclass(frozen=True)
class Candidate:
    """One screened action: the network it makes, its penalty factor, feasible, new, and its
    surrogate score (``epnas.surrogate``; higher is more promising)."""

    action: Action
    result: MorphResult
    factor: float
    feasible: bool
    new: bool
    score: float = 0.0


def pick(candidates: Sequence[Candidate]) -> tuple[int, bool]:
    """``(index, done)``: which candidate to take, and whether the walk ends with it.

    The feasible new candidate with the highest score ends the walk (the first one among
    equals, so with equal scores the policy's first sample wins).  Otherwise the walk goes
    on from the candidate with the highest ``(factor, new)`` — the first one among equals.
    """
    if not candidates:
        raise ValueError("no candidates to pick from")
    ready = [i for i, c in enumerate(candidates) if c.feasible and c.new]
    if ready:
        return max(ready, key=lambda i: (candidates[i].score, -i)), True
    best = max(range(len(candidates)), key=lambda i: (candidates[i].factor, candidates[i].new, -i))
    return best, False


# ---------------------------------------------------------------- proposals


@dataclass(frozen=True)
class Morph:
    """One morph of a proposal: ``action`` applied to ``parent`` gave ``result``."""

    parent: Arch
    action: Action
    result: MorphResult


@dataclass(frozen=True)
class Proposal:
    """A child: the morphs from its branch's network to it (at least one)."""

    morphs: tuple[Morph, ...]
    screened: int = 0

    @property
    def arch(self) -> Arch:
        return self.morphs[-1].result.arch


@dataclass
class ProposalContext:
    """What a strategy may look at: the constraint screen, every hash in the history, its
    generators, and the children evaluated so far."""

    screen: Screen
    seen: set[str]
    rng: random.Random
    generator: torch.Generator
    history: Sequence[ChildRecord] = ()


@dataclass(frozen=True)
class Learning:
    """What ``learn`` did: the update's numbers (loss, entropy, grad_norm) and the new baselines."""

    update: dict[str, float]
    baselines: list[float] = field(default_factory=list)


class Strategy(Protocol):
    """What the search loop needs from a strategy (module docstring)."""

    name: str

    def propose(self, parents: Sequence[Arch], context: ProposalContext) -> list[Proposal]:
        """One child per parent, in order."""
        ...

    def learn(self, trajectory: list[list[TrajectoryStep]], baselines: list[float]) -> Learning | None:
        """Learn from an episode (``trajectory[n][t]``); ``None`` when the strategy does not learn."""
        ...

    def seeds(self, history: Sequence[ChildRecord], episode: int, k: int, fallback: list[ArchJSON]) -> list[ArchJSON]:
        """The networks (JSON) that seed episode ``episode + 1``."""
        ...

    def save(self, store: Store, key: str) -> bool:
        """Write the strategy's state under ``key``; ``False`` when it has none."""
        ...

    def load(self, store: Store, key: str) -> None: ...


def make_strategy(spec: SearchSpec) -> Strategy:
    """The strategy ``spec.strategy`` names, initialised from ``spec.seed``."""
    if spec.strategy == "random":
        return RandomStrategy(spec)
    if spec.strategy == "epnas-paper":
        return PaperStrategy(spec)
    return EpnasStrategy(spec)


# ---------------------------------------------------------------- seeding rules


def top_k_by_reward(records: Sequence[ChildRecord], k: int, fallback: list[ArchJSON]) -> list[ArchJSON]:
    """The ``k`` best distinct networks by reward (ties: higher accuracy, then child id), filled from ``fallback``."""
    ranked = sorted(records, key=lambda r: (-r.reward, -r.val_accuracy, r.child))
    return _distinct(ranked, k, fallback)


def top_k_feasible_first(records: Sequence[ChildRecord], k: int, fallback: list[ArchJSON]) -> list[ArchJSON]:
    """The ``k`` best distinct networks: feasible ones by validation accuracy, then the rest by reward."""
    ranked = sorted(
        records, key=lambda r: (not r.feasible, -(r.val_accuracy if r.feasible else r.reward), -r.reward, r.child)
    )
    return _distinct(ranked, k, fallback)


def _distinct(ranked: Sequence[ChildRecord], k: int, fallback: list[ArchJSON]) -> list[ArchJSON]:
    best: dict[str, ChildRecord] = {}
    for r in ranked:
        best.setdefault(r.hash, r)
    seeds = [r.arch for r in list(best.values())[:k]]
    for arch in fallback:
        if len(seeds) >= k:
            break
        if arch not in seeds:
            seeds.append(arch)
    return seeds


def _trained(history: Sequence[ChildRecord], episode: int | None = None) -> list[ChildRecord]:
    return [r for r in history if r.status != "failed" and (episode is None or r.episode == episode)]


# ---------------------------------------------------------------- strategies


class RandomStrategy:
    """Uniform random actions (RENA's random-search baseline) in the progressive loop."""

    name = "random"

    def __init__(self, spec: SearchSpec) -> None:
        self.groups = spec.policy.scale_groups

    def propose(self, parents: Sequence[Arch], context: ProposalContext) -> list[Proposal]:
        proposals = []
        for parent in parents:
            action = random_action(parent, context.rng, self.groups)
            proposals.append(Proposal((Morph(parent, action, apply_action(parent, action)),)))
        return proposals

    def learn(self, trajectory: list[list[TrajectoryStep]], baselines: list[float]) -> Learning | None:
        return None

    def seeds(self, history: Sequence[ChildRecord], episode: int, k: int, fallback: list[ArchJSON]) -> list[ArchJSON]:
        return top_k_by_reward(_trained(history, episode), k, fallback)

    def save(self, store: Store, key: str) -> bool:
        return False

    def load(self, store: Store, key: str) -> None:
        return None


class PaperStrategy:
    """EPNAS as published: sample π_θ, REINFORCE per episode, the episode's top-K by reward."""

    name = "epnas-paper"

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self.policy = Policy(get_space(spec.search_space), spec.policy, generator_seed=spec.seed)
        self.optimizer = make_optimizer(self.policy)

    def propose(self, parents: Sequence[Arch], context: ProposalContext) -> list[Proposal]:
        with torch.no_grad(), single_thread():
            actions = [s.action for s in self.policy.sample_batch(list(parents), context.generator)]
        return [Proposal((Morph(p, a, apply_action(p, a)),)) for p, a in zip(parents, actions)]

    def learn(self, trajectory: list[list[TrajectoryStep]], baselines: list[float]) -> Learning | None:
        """One REINFORCE step (``epnas.reinforce``); a step's ``log π`` is the sum over its morphs."""
        n, t = len(trajectory), len(trajectory[0])
        moves = [(i, move) for i, step in enumerate(s for branch in trajectory for s in branch) for move in step.moves]
        with single_thread():
            log_probs, entropies = self.policy.log_prob_batch(
                [parse_arch(m.arch) for _, m in moves], [Action.from_dict(m.action) for _, m in moves]
            )
            index = torch.tensor([i for i, _ in moves])
            step_log_probs = torch.zeros(n * t, dtype=log_probs.dtype).index_add(0, index, log_probs)
            step_entropies = torch.zeros(n * t, dtype=entropies.dtype).index_add(0, index, entropies)
            rewards = torch.tensor([[s.reward for s in branch] for branch in trajectory], dtype=torch.float32)
            returns = reinforce.returns_to_go(rewards)
            baseline = reinforce.MovingBaseline(self.spec.policy.baseline_decay, baselines)
            b = baseline.update(returns)  # ENAS order: the baseline first, then advantages against it
            update = reinforce.update(
                self.policy,
                self.optimizer,
                step_log_probs.view(n, t),
                returns,
                b,
                step_entropies.view(n, t),
                self.spec.policy.entropy_weight,
            )
        return Learning(update, list(baseline.values))

    def seeds(self, history: Sequence[ChildRecord], episode: int, k: int, fallback: list[ArchJSON]) -> list[ArchJSON]:
        return top_k_by_reward(_trained(history, episode), k, fallback)

    def save(self, store: Store, key: str) -> bool:
        save_policy(store, key, self.policy, self.optimizer)
        return True

    def load(self, store: Store, key: str) -> None:
        load_policy(store, key, self.policy, self.optimizer)


class EpnasStrategy(PaperStrategy):
    """The shipped strategy: the paper's policy and update with zero-cost screening and
    feasibility-first seeding over the whole search (module docstring)."""

    name = "epnas"

    def propose(self, parents: Sequence[Arch], context: ProposalContext) -> list[Proposal]:
        count, max_morphs = self.spec.screening.candidates, self.spec.screening.max_morphs
        taken = set(context.seen)
        encoder = surrogate.Encoder.for_space(self.policy.space)
        posterior = fit_history(context.history, encoder)
        walks: list[list[Morph]] = [[] for _ in parents]
        current = list(parents)
        open_walks = list(range(len(parents)))
        screened = [0] * len(parents)
        for morph in range(max_morphs):
            if not open_walks:
                break
            rows = [current[b] for b in open_walks for _ in range(count)]
            with torch.no_grad(), single_thread():
                actions = [s.action for s in self.policy.sample_batch(rows, context.generator)]
            still_open = []
            for j, b in enumerate(open_walks):  # branch by branch, so siblings see each other's picks
                weights = encoder.draw(posterior, context.generator)  # Thompson sampling: one draw per branch and morph
                candidates = []
                for action in actions[j * count : (j + 1) * count]:
                    result = apply_action(current[b], action)
                    factor, feasible, metrics = context.screen.assess(result.arch)
                    phi = encoder.encode(result.arch, metrics.params, metrics.flops, metrics.compute_intensity)
                    score = float(torch.tensor(phi, dtype=torch.float64) @ weights)
                    candidates.append(Candidate(action, result, factor, feasible, result.arch.hash not in taken, score))
                index, done = pick(candidates)
                chosen = candidates[index]
                screened[b] += len(candidates)
                walks[b].append(Morph(current[b], chosen.action, chosen.result))
                current[b] = chosen.result.arch
                if done or morph == max_morphs - 1:
                    taken.add(chosen.result.arch.hash)
                else:
                    still_open.append(b)
            open_walks = still_open
        return [Proposal(tuple(walk), screened[b]) for b, walk in enumerate(walks)]

    def seeds(self, history: Sequence[ChildRecord], episode: int, k: int, fallback: list[ArchJSON]) -> list[ArchJSON]:
        return top_k_feasible_first(_trained(history), k, fallback)


def fit_history(history: Sequence[ChildRecord], encoder: surrogate.Encoder) -> surrogate.Posterior:
    """The surrogate's posterior given every trained (not failed) child of the search."""
    trained = [r for r in history if r.status != "failed" and r.metrics]
    phi = [
        encoder.encode(parse_arch(r.arch), r.metrics["params"], r.metrics["flops"], r.metrics["compute_intensity"])
        for r in trained
    ]
    return encoder.fit(phi, [r.val_accuracy for r in trained])


@contextlib.contextmanager
def single_thread():
    """Policy work is tiny: one thread is 5–15× faster than torch's default on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
