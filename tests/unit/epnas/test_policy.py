"""The policy network: a proper distribution over actions, sample == replay, the L+5 rule,
U(−0.1, 0.1) initialisation, and learning a toy reward better than random search."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest
import torch

from epnas import reinforce
from epnas.arch import Arch, Layer, parse_arch, random_arch
from epnas.morph import Action, apply_action, insert_fields, max_positions, random_action
from epnas.policy import Policy, choose, make_optimizer
from epnas.space import SPACES, LayerSpace, nearest_index
from epnas.spec import PolicySpec

TINY = LayerSpace(
    name="image-layer",
    ops=("conv2d", "add"),
    channels=(16, 32),
    widths=(1, 3),
    pool_widths=(2,),
    activations=("relu",),
    input_shape=(1, 8, 8),
    max_layers=2,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one intra-op thread is faster, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv(src1: int, channels: int = 16, width: int = 3, src2: int | None = None, op: str = "conv2d") -> Layer:
    return Layer(op=op, src1=src1, src2=src2, channels=channels, width=width, activation="relu")


def layer_arch(depth: int) -> Arch:
    return parse_arch(Arch(space="image-layer", layers=tuple(conv(i) for i in range(depth))))


def all_actions(space: LayerSpace, depth: int, groups: int) -> list[Action]:
    """Every action the policy can emit for a ``depth``-layer network (in canonical form)."""
    fields = insert_fields(space)
    allowed = min(depth + 5, max_positions(space))
    tails: list[tuple[int, int, int, dict[str, int]]] = [(1, 0, 0, {})]
    tails += [(2, position, 0, {}) for position in range(allowed)]
    for position in range(allowed):
        for src2 in range(min(position, depth) + 1):
            for values in itertools.product(*(range(n) for _, n in fields)):
                tails.append((0, position, src2, dict(zip((name for name, _ in fields), values))))
    scales = list(itertools.product(range(3), repeat=groups))
    return [
        Action(scale_channel=c, scale_width=w, kind=kind, position=position, src2=src2, insert=insert)
        for c in scales
        for w in scales
        for kind, position, src2, insert in tails
    ]


# ---------------------------------------------------------------- a distribution over actions


def test_probabilities_of_every_action_sum_to_one():
    policy = Policy(TINY, PolicySpec(scale_groups=1), generator_seed=0)
    actions = all_actions(TINY, depth=1, groups=1)
    # 9 scale pairs × (keep + 6 removes + 11 (position, src2) pairs × 16 field combinations)
    assert len(actions) == 9 * (1 + 6 + 11 * 16)
    with torch.no_grad():
        log_probs, _ = policy.log_prob_batch([layer_arch(1)] * len(actions), actions)
    assert torch.logsumexp(log_probs.double(), 0).exp().item() == pytest.approx(1.0, abs=1e-5)


def test_the_policy_reads_its_tables_from_the_space_object():
    policy = Policy(TINY, PolicySpec(scale_groups=1))
    assert policy.fields == insert_fields(TINY)
    assert policy.insert_heads["op"].out_features == 2
    assert policy.insert_heads["position"].out_features == 7
    assert policy.layer_embedding["channels"].num_embeddings == 3


def test_sample_and_log_prob_agree():
    space = SPACES["image-layer"]
    policy = Policy(space, PolicySpec(), generator_seed=1)
    rng = random.Random(0)
    archs = [random_arch("image-layer", depth, rng) for depth in (1, 3, 10, 31) for _ in range(4)]
    generator = torch.Generator().manual_seed(0)
    for sampled in policy.sample_batch(archs, generator):
        assert sampled.log_prob.requires_grad
    for arch in archs:
        sampled = policy.sample(arch, generator)
        log_prob, entropy = policy.log_prob(arch, sampled.action)
        assert log_prob.item() == pytest.approx(sampled.log_prob.item(), abs=1e-5)
        assert entropy.item() == pytest.approx(sampled.entropy.item(), abs=1e-5)
        apply_action(arch, sampled.action)  # every sampled action applies


@pytest.mark.parametrize("name", ["image-module", "kws-layer"])
def test_other_spaces_sample_replay_and_apply(name):
    policy = Policy(SPACES[name], PolicySpec(), generator_seed=2)
    rng = random.Random(1)
    archs = [random_arch(name, depth, rng) for depth in (1, 2, 4) for _ in range(3)]
    samples = policy.sample_batch(archs, torch.Generator().manual_seed(3))
    log_probs, _ = policy.log_prob_batch(archs, [s.action for s in samples])
    assert torch.allclose(log_probs, torch.stack([s.log_prob for s in samples]), atol=1e-5)
    for arch, sampled in zip(archs, samples):
        apply_action(arch, sampled.action)


def test_deterministic_given_the_generator_and_seed():
    space = SPACES["image-layer"]
    arch = layer_arch(3)
    first = Policy(space, PolicySpec(), generator_seed=7).sample(arch, torch.Generator().manual_seed(5))
    second = Policy(space, PolicySpec(), generator_seed=7).sample(arch, torch.Generator().manual_seed(5))
    assert first.action == second.action
    assert first.log_prob.item() == second.log_prob.item()


def test_action_shape_and_unused_fields():
    policy = Policy(SPACES["image-layer"], PolicySpec(), generator_seed=0)
    generator = torch.Generator().manual_seed(0)
    kinds = set()
    for sampled in policy.sample_batch([layer_arch(3)] * 200, generator):
        action = sampled.action
        kinds.add(action.kind)
        assert len(action.scale_channel) == len(action.scale_width) == 4
        if action.kind == 0:
            assert list(action.insert) == [name for name, _ in insert_fields(policy.space)]
        else:
            assert action.insert == {} and action.src2 == 0
        if action.kind == 1:
            assert action.position == 0
    assert kinds == {0, 1, 2}


def test_the_l_plus_5_rule():
    policy = Policy(SPACES["image-layer"], PolicySpec(), generator_seed=0)
    # make the out-of-range positions the most likely ones, so the mask is what stops them
    with torch.no_grad():
        policy.insert_heads["position"].bias[8:] = 5.0
        policy.insert_heads["src2"].bias[:] = torch.arange(policy.positions, dtype=torch.float)
    generator = torch.Generator().manual_seed(0)
    samples = policy.sample_batch([layer_arch(3)] * 500, generator)
    positions = [s.action.position for s in samples if s.action.kind != 1]
    assert max(positions) == 7  # L + 5 − 1
    for s in samples:
        if s.action.kind == 0:
            assert s.action.src2 <= min(s.action.position, 3)
    assert any(s.action.kind == 0 and s.action.src2 == 3 for s in samples)


def test_replaying_a_position_outside_the_rule_is_an_error():
    policy = Policy(SPACES["image-layer"], PolicySpec())
    action = Action(scale_channel=(1,) * 4, scale_width=(1,) * 4, kind=2, position=8)
    with pytest.raises(ValueError):
        policy.log_prob(layer_arch(3), action)


def test_keep_ignores_stale_position_fields():
    policy = Policy(SPACES["image-layer"], PolicySpec(), generator_seed=0)
    arch = layer_arch(2)
    stale = random_action(arch, random.Random(0))
    keep = Action(scale_channel=stale.scale_channel, scale_width=stale.scale_width, kind=1)
    stale_keep = Action(
        stale.scale_channel, stale.scale_width, kind=1, position=stale.position, src2=stale.src2, insert=stale.insert
    )
    assert policy.log_prob(arch, keep)[0].item() == policy.log_prob(arch, stale_keep)[0].item()


def test_uniform_initialisation_and_tensor_state():
    policy = Policy(SPACES["image-layer"], PolicySpec(), generator_seed=0)
    values = torch.cat([p.detach().flatten() for p in policy.parameters()])
    assert values.abs().max().item() <= 0.1
    assert values.min().item() < -0.099 and values.max().item() > 0.099
    assert abs(values.mean().item()) < 0.005
    assert all(isinstance(v, torch.Tensor) for v in policy.state_dict().values())
    assert make_optimizer(policy).param_groups[0]["lr"] == 6e-4


def test_layer_features_snap_off_table_values():
    assert nearest_index((16, 32, 64), 40) == 1
    assert nearest_index((16, 32, 64), 48) == 1  # tie → lower index, as step_along
    policy = Policy(SPACES["image-layer"], PolicySpec(), generator_seed=0)
    arch = parse_arch(Arch(space="image-layer", layers=(conv(0, channels=40), conv(1, channels=32, src2=0))))
    same = parse_arch(Arch(space="image-layer", layers=(conv(0, channels=32), conv(1, channels=32, src2=0))))
    embedded, _ = policy.embed_layers([arch, same])
    assert torch.equal(embedded[0], embedded[1])


def test_choose_masks_and_zeroes_inactive_rows():
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    allowed = torch.tensor([[True, True, False], [True, True, True]])
    active = torch.tensor([True, False])
    choice, log_prob, entropy = choose(logits, active, allowed=allowed, forced=torch.tensor([1, 2]))
    assert choice.tolist() == [1, 0]
    assert log_prob.tolist() == pytest.approx([-0.693147, 0.0], abs=1e-6)  # log 1/2
    assert entropy.tolist() == pytest.approx([0.693147, 0.0], abs=1e-6)


# ---------------------------------------------------------------- learning a toy reward


def pool_fraction(arch: Arch) -> float:
    """The toy reward: the fraction of layers that are max-pools."""
    return sum(layer.op == "maxpool" for layer in arch.layers) / len(arch.layers)


def run_toy(choose_actions, episodes: int, branches: int = 8, steps: int = 3):
    """Yields ``(rewards [N, T], states [N][T], actions [N][T])`` per episode: N branches from
    one 2-layer conv network, T steps; ``choose_actions(archs) → actions`` once per step."""
    start = layer_arch(2)
    for _ in range(episodes):
        archs = [start] * branches
        rewards = torch.zeros(branches, steps)
        states: list[list[Arch]] = [[] for _ in range(branches)]
        taken: list[list[Action]] = [[] for _ in range(branches)]
        for t in range(steps):
            actions = choose_actions(archs)
            for n, (arch, action) in enumerate(zip(archs, actions)):
                states[n].append(arch)
                taken[n].append(action)
            archs = [apply_action(a, x).arch for a, x in zip(archs, actions)]
            rewards[:, t] = torch.tensor([pool_fraction(a) for a in archs])
        yield rewards, states, taken


def policy_rewards(seed: int, episodes: int = 30) -> list[float]:
    """Mean reward per episode of the policy, updated by REINFORCE after every episode."""
    # lr 0.01 instead of the paper's 6e-4: 30 updates of 24 samples at 6e-4 barely move the
    # logits (the paper runs thousands of samples); small LSTMs keep the test fast
    spec = PolicySpec(learning_rate=0.01, embedding_size=16, hidden_size=32, scale_groups=2)
    policy = Policy(SPACES["image-layer"], spec, generator_seed=seed)
    optimizer = make_optimizer(policy)
    baseline = reinforce.MovingBaseline(spec.baseline_decay)
    generator = torch.Generator().manual_seed(seed)

    def sample(archs):
        with torch.no_grad():
            return [s.action for s in policy.sample_batch(archs, generator)]

    means = []
    for rewards, states, taken in run_toy(sample, episodes):
        branches, steps = rewards.shape
        # replay the episode as the search loop does from its history: one batch of N·T rows
        flat_log_probs, _ = policy.log_prob_batch(sum(states, []), sum(taken, []))
        returns = reinforce.returns_to_go(rewards)
        b = baseline.update(returns)
        reinforce.update(policy, optimizer, flat_log_probs.view(branches, steps), returns, b)
        means.append(rewards.mean().item())
    return means


def random_rewards(seed: int, episodes: int = 30) -> list[float]:
    """Mean reward per episode of uniformly random actions (the papers' random search)."""
    rng = random.Random(seed)
    return [r.mean().item() for r, _, _ in run_toy(lambda archs: [random_action(a, rng) for a in archs], episodes)]


def test_policy_learns_a_toy_reward_better_than_random():
    policy_means, random_means = [], []
    for seed in range(5):
        policy_means.append(statistics.mean(policy_rewards(seed)[-5:]))
        random_means.append(statistics.mean(random_rewards(seed)[-5:]))
    print("policy", [round(m, 3) for m in policy_means], "random", [round(m, 3) for m in random_means])
    for learned, uniform in zip(policy_means, random_means):
        assert learned > uniform
    assert statistics.mean(policy_means) > statistics.mean(random_means) + 0.1
