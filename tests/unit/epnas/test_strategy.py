"""Search strategies: the screening rule, seeding rules and proposals, against hand-computed cases."""

from __future__ import annotations

import random

import pytest
import torch

from epnas.arch import parse_arch
from epnas.metrics import compute_metrics
from epnas.morph import Action, MorphResult
from epnas.records import ChildRecord, Move, TrajectoryStep
from epnas.spec import parse_search
from epnas.strategy import (
    Candidate,
    EpnasStrategy,
    PaperStrategy,
    ProposalContext,
    RandomStrategy,
    Screen,
    make_strategy,
    pick,
    top_k_by_reward,
    top_k_feasible_first,
)

ARCH = parse_arch(
    {"space": "image-layer", "layers": [{"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"}]}
)
KEEP = Action((1,) * 4, (1,) * 4, 1)


def candidate(factor: float, new: bool, score: float = 0.0) -> Candidate:
    return Candidate(KEEP, MorphResult(ARCH, "keep"), factor, factor == 1.0, new, score)


@pytest.mark.parametrize(
    "name, candidates, expected",
    [
        ("feasible new wins over an earlier infeasible one", [(0.5, True, 9.0), (1.0, True, 0.0)], (1, True)),
        ("equal scores: the first feasible new", [(0.5, True, 0.0), (1.0, True, 0.0), (1.0, True, 0.0)], (1, True)),
        (
            "the highest score among feasible new",
            [(1.0, True, 0.1), (1.0, False, 0.9), (1.0, True, 0.3), (1.0, True, 0.2)],
            (2, True),
        ),
        (
            "a feasible known network is walked on from",
            [(0.5, True, 0.0), (1.0, False, 0.0), (0.9, True, 5.0)],
            (1, False),
        ),
        ("no feasible: the highest factor", [(0.5, True, 0.0), (0.81, True, 0.0), (0.6, True, 0.0)], (1, False)),
        ("equal factors: new before known", [(0.81, False, 0.0), (0.81, True, 0.0)], (1, False)),
        ("equal factors and novelty: the first", [(0.7, True, 0.0), (0.7, True, 0.0)], (0, False)),
    ],
)
def test_pick(name: str, candidates: list[tuple[float, bool, float]], expected: tuple[int, bool]) -> None:
    assert pick([candidate(f, n, s) for f, n, s in candidates]) == expected


def test_pick_needs_candidates() -> None:
    with pytest.raises(ValueError):
        pick([])


def search(strategy: str = "epnas", **spec) -> object:
    doc = {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ArchitectureSearch",
        "metadata": {"name": "s"},
        "spec": {
            "strategy": strategy,
            "seed": 3,
            "dataset": {"kind": "digits"},
            "constraints": [{"metric": "modelSize", "max": 25000}, {"metric": "computeIntensity", "min": 5}],
            "initialArchitecture": {"random": {"depth": 4}},
            "budget": {"branches": 4, "stepsPerEpisode": 3, "topK": 4},
            **spec,
        },
    }
    return parse_search(doc)


def test_screen_factor_is_the_rewards_penalty_by_hand() -> None:
    # conv2d 1→16, 3×3 on 8×8 digits: params 1·9·16 + 2·16 (BN) + head 16·10 + 10 = 346
    spec = search(constraints=[{"metric": "modelSize", "max": 173}]).spec
    screen = Screen.for_spec(spec)
    assert compute_metrics(ARCH, (1, 8, 8), 10).params == 346
    factor, feasible = screen.factor(ARCH)
    assert factor == pytest.approx(0.9 ** (346 / 173 - 1)) and not feasible  # V = 1
    assert Screen.for_spec(search(constraints=[{"metric": "modelSize", "max": 346}]).spec).factor(ARCH) == (1.0, True)


def record(child: str, reward: float, val: float, feasible: bool, arch_seed: int, episode: int = 0) -> ChildRecord:
    arch = {
        "space": "image-layer",
        "layers": [{"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"}] * 1,
    }
    arch["layers"] = [dict(arch["layers"][0], channels=(16, 32, 64, 96, 128, 256)[arch_seed % 6])]
    return ChildRecord(
        child,
        episode,
        0,
        0,
        "seed",
        parse_arch(arch).hash,
        arch,
        None,
        "keep",
        None,
        "succeeded",
        val,
        0.0,
        reward,
        feasible,
    )


def test_seeding_rules_by_hand() -> None:
    accurate_infeasible = record("a", reward=0.89 * 0.9**0.2, val=0.89, feasible=False, arch_seed=0)
    feasible = record("b", reward=0.80, val=0.80, feasible=True, arch_seed=1)
    better_feasible = record("c", reward=0.82, val=0.82, feasible=True, arch_seed=2)
    records = [accurate_infeasible, feasible, better_feasible]
    # the paper: by reward, 0.89·0.9^0.2 ≈ 0.873 first
    assert top_k_by_reward(records, 2, []) == [accurate_infeasible.arch, better_feasible.arch]
    # shipped: feasible first, by accuracy, then the rest by reward
    assert top_k_feasible_first(records, 3, []) == [better_feasible.arch, feasible.arch, accurate_infeasible.arch]
    # duplicates count once, and the fallback fills up
    assert top_k_feasible_first([feasible, feasible], 2, [ARCH.model_dump(mode="json", exclude_none=True)]) == [
        feasible.arch,
        ARCH.model_dump(mode="json", exclude_none=True),
    ]


def test_make_strategy_by_name() -> None:
    assert isinstance(make_strategy(search("epnas").spec), EpnasStrategy)
    assert type(make_strategy(search("epnas-paper").spec)) is PaperStrategy
    assert isinstance(make_strategy(search("random").spec), RandomStrategy)


def context(spec, seen: set[str] = frozenset()) -> ProposalContext:
    return ProposalContext(Screen.for_spec(spec), set(seen), random.Random(0), torch.Generator().manual_seed(0))


def test_epnas_proposes_feasible_new_networks_from_an_infeasible_start() -> None:
    spec = search().spec
    start = parse_arch(
        {
            "space": "image-layer",
            "layers": [
                {"op": "maxpool", "src1": 0, "width": 2},
                {"op": "conv2d", "src1": 1, "channels": 128, "width": 3, "activation": "relu"},
            ],
        }
    )
    screen = Screen.for_spec(spec)
    assert not screen.factor(start)[1]
    seen = {start.hash}
    proposals = EpnasStrategy(spec).propose([start] * 4, context(spec, seen))
    hashes = [p.arch.hash for p in proposals]
    assert len(set(hashes)) == 4 and not set(hashes) & seen  # siblings differ, none seen before
    for p in proposals:
        assert 1 <= len(p.morphs) <= spec.screening.max_morphs
        assert p.morphs[0].parent == start
        assert all(
            a.result.arch == b.parent for a, b in zip(p.morphs, p.morphs[1:])
        )  # a walk: each morph starts where the last ended
        assert p.screened == len(p.morphs) * spec.screening.candidates
    feasible = [screen.factor(p.arch)[1] for p in proposals]
    assert all(feasible), feasible


def test_walks_end_at_max_morphs_with_the_least_violating_network() -> None:
    # a constraint no network of one morph can meet: modelSize ≤ 1 parameter
    spec = search(constraints=[{"metric": "modelSize", "max": 1}], screening={"candidates": 8, "maxMorphs": 2}).spec
    proposals = EpnasStrategy(spec).propose([ARCH], context(spec))
    assert len(proposals[0].morphs) == 2 and proposals[0].screened == 16
    assert not Screen.for_spec(spec).factor(proposals[0].arch)[1]


def test_paper_and_random_take_exactly_one_unscreened_morph() -> None:
    for name in ("epnas-paper", "random"):
        spec = search(name).spec
        proposals = make_strategy(spec).propose([ARCH] * 3, context(spec))
        assert [len(p.morphs) for p in proposals] == [1, 1, 1]
        assert all(p.screened == 0 for p in proposals)


def test_learning_sums_log_probabilities_over_a_walks_morphs() -> None:
    spec = search().spec
    strategy = EpnasStrategy(spec)
    proposals = strategy.propose([ARCH, ARCH], context(spec))
    steps = [
        [
            TrajectoryStep(
                tuple(Move(m.parent.model_dump(mode="json", exclude_none=True), m.action.to_dict()) for m in p.morphs),
                r,
            )
        ]
        for p, r in zip(proposals, (1.0, 0.0))
    ]
    # by hand: the update's loss is −1/N Σ_n log π(walk_n)·(R_n − b), b = mean R = 0.5
    log_pi = [sum(strategy.policy.log_prob(m.parent, m.action)[0].item() for m in p.morphs) for p in proposals]
    expected = -(log_pi[0] * 0.5 + log_pi[1] * -0.5) / 2
    learning = strategy.learn(steps, [])
    assert learning.update["loss"] == pytest.approx(expected, rel=1e-5)
    assert learning.baselines == [0.5]
    assert RandomStrategy(spec).learn(steps, []) is None
