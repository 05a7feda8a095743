"""The EPNAS policy network π_θ(a | X) (EPNAS §3.1–3.2, supplement §2).

Named steps, top to bottom, for a batch of ``B`` architectures:

1. ``embed_layers``: every layer (or cell branch) → the **sum** of trainable embedding
   lookups of its features, each an index into the space's value tables (slot 0 = the
   feature is absent; values off a table snap to the nearest entry, as
   ``epnas.space.step_along`` does) → ``[B, L_max, E]``.
2. ``embed_networks``: LSTM(E) over the layers in order; the hidden state after the
   last real layer is the network embedding ``[B, E]``.
3. ``decode_scale``: scale LSTMCell(H), ``F`` steps; step ``f``'s output → linear → 6
   logits: channels (0 up, 1 keep, 2 down) and width (same), one categorical each.
   Input of step 0: the network embedding; of step ``f > 0``: the embeddings of group
   ``f − 1``'s two choices, summed.
4. ``decode_insert``: insert LSTMCell(H), autoregressive (ENAS): each step's input is
   the embedding of the previous choice, the first the network embedding.
   ``kind`` (0 insert, 1 keep, 2 remove); keep → stop.  ``position`` (Src1) over the
   ``N_l = max_positions(space)`` logits with only the first ``min(L + 5, N_l)`` allowed
   (the L+5 rule); remove → stop.  Insert: ``src2`` over the first
   ``min(position, L) + 1`` (the last value = no skip), then one categorical per
   ``insert_fields(space)`` entry, in that order.

``log π(a | X)`` is the sum of the log-probabilities of every choice actually sampled;
the entropy is the sum of the entropies of those same distributions.  Decoding is
batched: every row runs every decoder step, and a row's choices after it stopped are
masked out of its log-probability, its entropy and its action.

``sample`` draws with a ``torch.Generator`` (deterministic given it); ``log_prob``
replays a stored action through the same code with the choices forced, so both give
the same numbers.  No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from epnas.arch import Arch, Branch, Layer
from epnas.morph import EXTRA_POSITIONS, Action, insert_fields, max_positions
from epnas.ops import slot_value, table
from epnas.space import LayerSpace, ModuleSpace, nearest_index
from epnas.spec import PolicySpec

INSERT, KEEP, REMOVE = 0, 1, 2
SCALE_OPTIONS = 3
OPTIONAL_SLOTS = ("pool", "freq_width", "stride_time", "stride_freq", "dilation", "directions", "keep")

Feature = tuple[str, int, Callable[[Any], int]]


@dataclass(frozen=True)
class Sampled:
    """One sampled action with ``log π(a | X)`` (scalar, with grad) and its entropy (scalar)."""

    action: Action
    log_prob: Tensor
    entropy: Tensor


# ---------------------------------------------------------------- layer features


def _numeric(values: Sequence, pick: Callable[[Any], Any]) -> Callable[[Any], int]:
    """Feature index ``1 + nearest`` for a numeric field, 0 when unset."""

    def index(item: Any) -> int:
        value = pick(item)
        return 0 if value is None else 1 + nearest_index(values, value)

    return index


def _named(values: Sequence[str], pick: Callable[[Any], Any]) -> Callable[[Any], int]:
    """Feature index ``1 + position`` for a named field, 0 when unset or not in the table."""

    def index(item: Any) -> int:
        value = pick(item)
        return 1 + values.index(value) if value in values else 0

    return index


def _slot_feature(space: LayerSpace, name: str) -> Feature:
    """The numeric feature of slot ``name`` (``epnas.ops.TABLES``): the layer's value in that slot."""
    values = table(space, name)
    return (name, len(values) + 1, _numeric(values, lambda layer: slot_value(space, layer, name)))


def layer_features(space: LayerSpace) -> list[Feature]:
    """``(name, table size, layer → index)`` for every embedded feature of a layer: op, channels,
    width, activation, merge, skip, then each of ``OPTIONAL_SLOTS`` the space has a table for (a
    pooling op's width is embedded as ``pool`` where the space has pooling widths)."""
    features: list[Feature] = [
        ("op", len(space.ops) + 1, _named(space.ops, lambda layer: layer.op)),
        _slot_feature(space, "channels"),
        _slot_feature(space, "width"),
        ("activation", len(space.activations) + 1, _named(space.activations, lambda layer: layer.activation)),
        ("merge", 3, lambda layer: 0 if layer.src2 is None else 1 + ("add", "concat").index(layer.merge)),
        ("skip", 2, lambda layer: int(layer.src2 is not None)),
    ]
    return features + [_slot_feature(space, name) for name in OPTIONAL_SLOTS if table(space, name)]


def branch_features(space: ModuleSpace) -> list[Feature]:
    """``(name, table size, branch → index)`` for every embedded feature of a cell branch."""
    return [
        ("op", len(space.branch_types) + 1, _named(space.branch_types, lambda b: b.type)),
        ("channels", len(space.channels) + 1, _numeric(space.channels, lambda b: b.channels)),
        ("width", len(space.widths) + 1, _numeric(space.widths, lambda b: b.width)),
        ("pool", len(space.pool_widths) + 1, _numeric(space.pool_widths, lambda b: b.pool)),
        ("activation", len(space.activations) + 1, _named(space.activations, lambda b: b.activation)),
        ("propagate", 2, lambda b: int(b.propagate)),
        ("skip", 2, lambda b: int(b.src2 is not None)),
    ]


# ---------------------------------------------------------------- one categorical choice


def choose(
    logits: Tensor,
    active: Tensor,
    *,
    allowed: Tensor | None = None,
    forced: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One categorical per row: ``(choice [B], log p(choice) [B], entropy [B])``.

    ``allowed`` [B, n] masks options out (probability exactly 0); ``forced`` replays
    given choices instead of sampling; rows where ``active`` is false contribute 0 to
    the log-probability and the entropy, and their choice is 0.
    """
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    probs = logp.exp()
    if forced is None:
        choice = torch.multinomial(probs.detach(), 1, generator=generator).squeeze(1)
    else:
        choice = torch.where(active, forced, torch.zeros_like(forced))
        if allowed is not None and not bool(allowed.gather(1, choice[:, None]).all()):
            raise ValueError("a replayed choice is outside the allowed options")
    choice = torch.where(active, choice, torch.zeros_like(choice))
    chosen_logp = logp.gather(1, choice[:, None]).squeeze(1)
    # masked options have p = 0: their p·log p term is 0 (masked_fill keeps the grad finite)
    safe_logp = logp if allowed is None else logp.masked_fill(~allowed, 0.0)
    entropy = -(probs * safe_logp).sum(dim=-1)
    zero = torch.zeros((), dtype=logits.dtype)
    return choice, torch.where(active, chosen_logp, zero), torch.where(active, entropy, zero)


# ---------------------------------------------------------------- the policy


class Policy(nn.Module):
    """π_θ(a | X) for one search space (module docstring: the decoding order)."""

    def __init__(self, space: LayerSpace | ModuleSpace, spec: PolicySpec, *, generator_seed: int | None = None) -> None:
        super().__init__()
        self.space = space
        self.spec = spec
        self.groups = spec.scale_groups
        self.positions = max_positions(space)
        self.fields = insert_fields(space)
        self.features = layer_features(space) if isinstance(space, LayerSpace) else branch_features(space)
        emb, hid = spec.embedding_size, spec.hidden_size

        self.layer_embedding = nn.ModuleDict({name: nn.Embedding(size, emb) for name, size, _ in self.features})
        self.network_lstm = nn.LSTM(emb, emb, batch_first=True)

        self.scale_cell = nn.LSTMCell(emb, hid)
        self.scale_head = nn.Linear(hid, 2 * SCALE_OPTIONS)
        self.scale_channel_embedding = nn.Embedding(SCALE_OPTIONS, emb)
        self.scale_width_embedding = nn.Embedding(SCALE_OPTIONS, emb)

        decisions = [("kind", 3), ("position", self.positions), ("src2", self.positions), *self.fields]
        self.insert_cell = nn.LSTMCell(emb, hid)
        self.insert_heads = nn.ModuleDict({name: nn.Linear(hid, n) for name, n in decisions})
        self.insert_embedding = nn.ModuleDict({name: nn.Embedding(n, emb) for name, n in decisions})

        self.reset_parameters(generator_seed)

    def reset_parameters(self, seed: int | None = None) -> None:
        """Every parameter ~ U(−init_range, init_range) (EPNAS §4.1); seeded when ``seed`` is given."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        r = self.spec.init_range
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.rand(param.shape, generator=generator) * 2 * r - r)

    # ------------------------------------------------------------ public API

    def sample(self, arch: Arch, generator: torch.Generator | None = None) -> Sampled:
        """Sample one action for ``arch``."""
        return self.sample_batch([arch], generator)[0]

    def sample_batch(self, archs: Sequence[Arch], generator: torch.Generator | None = None) -> list[Sampled]:
        """Sample one action per architecture, decoded as one batch."""
        actions, log_probs, entropies = self._decode(list(archs), None, generator)
        return [Sampled(a, lp, ent) for a, lp, ent in zip(actions, log_probs, entropies)]

    def log_prob(self, arch: Arch, action: Action) -> tuple[Tensor, Tensor]:
        """``(log π(action | arch), entropy)``, both scalars with grad, as ``sample`` computed them."""
        log_probs, entropies = self.log_prob_batch([arch], [action])
        return log_probs[0], entropies[0]

    def log_prob_batch(self, archs: Sequence[Arch], actions: Sequence[Action]) -> tuple[Tensor, Tensor]:
        """``(log π [B], entropy [B])`` of stored actions, one row per ``(arch, action)``."""
        if len(archs) != len(actions):
            raise ValueError(f"{len(archs)} architectures but {len(actions)} actions")
        _, log_probs, entropies = self._decode(list(archs), list(actions), None)
        return log_probs, entropies

    # ------------------------------------------------------------ named steps

    def embed_layers(self, archs: list[Arch]) -> tuple[Tensor, Tensor]:
        """``(summed feature embeddings [B, L_max, E], depths [B])``; padding rows are index 0."""
        items = [self._items(arch) for arch in archs]
        depths = torch.tensor([len(x) for x in items])
        index = torch.zeros(len(archs), int(depths.max()), len(self.features), dtype=torch.long)
        rows = [[[fn(item) for _, _, fn in self.features] for item in layer_items] for layer_items in items]
        for b, row in enumerate(rows):
            index[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        embedded = sum(self.layer_embedding[name](index[..., k]) for k, (name, _, _) in enumerate(self.features))
        return embedded, depths

    def embed_networks(self, embedded: Tensor, depths: Tensor) -> Tensor:
        """Network embedding ``[B, E]``: the LSTM's hidden state after each network's last layer
        (padding after it cannot reach that state: the LSTM is causal)."""
        outputs, _ = self.network_lstm(embedded)
        return outputs[torch.arange(len(depths)), depths - 1]

    def decode_scale(self, network: Tensor, forced: Tensor | None, generator: torch.Generator | None):
        """``F`` groups × (channel, width) choices: ``(choices [B, F, 2], log p [B], entropy [B])``."""
        batch = network.shape[0]
        active = torch.ones(batch, dtype=torch.bool)
        state = None
        x = network
        choices, log_prob, entropy = [], network.new_zeros(batch), network.new_zeros(batch)
        for f in range(self.groups):
            h, c = self.scale_cell(x, state)
            state = (h, c)
            logits = self.scale_head(h)
            channel, lp_c, ent_c = choose(
                logits[:, :SCALE_OPTIONS],
                active,
                forced=None if forced is None else forced[:, f, 0],
                generator=generator,
            )
            width, lp_w, ent_w = choose(
                logits[:, SCALE_OPTIONS:],
                active,
                forced=None if forced is None else forced[:, f, 1],
                generator=generator,
            )
            choices.append(torch.stack([channel, width], dim=1))
            log_prob = log_prob + lp_c + lp_w
            entropy = entropy + ent_c + ent_w
            x = self.scale_channel_embedding(channel) + self.scale_width_embedding(width)
        return torch.stack(choices, dim=1), log_prob, entropy

    def decode_insert(
        self, network: Tensor, depths: Tensor, forced: dict[str, Tensor] | None, generator: torch.Generator | None
    ):
        """kind → position (L+5 rule) → src2 → insert fields: ``(choices {name: [B]}, log p [B], entropy [B])``."""
        batch = network.shape[0]
        options = torch.arange(self.positions)
        state = None
        x = network
        choices: dict[str, Tensor] = {}
        log_prob, entropy = network.new_zeros(batch), network.new_zeros(batch)

        def step(name: str, active: Tensor, allowed: Tensor | None = None) -> Tensor:
            nonlocal state, x, log_prob, entropy
            h, c = self.insert_cell(x, state)
            state = (h, c)
            logits = self.insert_heads[name](h)
            choice, lp, ent = choose(
                logits, active, allowed=allowed, forced=None if forced is None else forced[name], generator=generator
            )
            choices[name] = choice
            log_prob = log_prob + lp
            entropy = entropy + ent
            x = self.insert_embedding[name](choice)
            return choice

        kind = step("kind", torch.ones(batch, dtype=torch.bool))
        moves = kind != KEEP
        inserts = kind == INSERT
        position = step("position", moves, allowed=options[None, :] < (depths + EXTRA_POSITIONS)[:, None])
        step("src2", inserts, allowed=options[None, :] <= torch.minimum(position, depths)[:, None])
        for name, _ in self.fields:
            step(name, inserts)
        return choices, log_prob, entropy

    # ------------------------------------------------------------ glue

    def _items(self, arch: Arch) -> Sequence[Layer | Branch]:
        if arch.space != self.space.name:
            raise ValueError(f"architecture of space {arch.space!r}, policy of space {self.space.name!r}")
        if isinstance(self.space, LayerSpace):
            if not arch.layers:
                raise ValueError("a layer-space architecture needs at least one layer")
            return arch.layers
        if arch.cell is None or not arch.cell.branches:
            raise ValueError("a module-space architecture needs a cell with at least one branch")
        return arch.cell.branches

    def _decode(self, archs: list[Arch], actions: list[Action] | None, generator: torch.Generator | None):
        if not archs:
            raise ValueError("no architectures to decode")
        embedded, depths = self.embed_layers(archs)
        network = self.embed_networks(embedded, depths)
        scale_forced = insert_forced = None
        if actions is not None:
            scale_forced, insert_forced = self._forced(actions)
        scale_choices, lp_scale, ent_scale = self.decode_scale(network, scale_forced, generator)
        insert_choices, lp_insert, ent_insert = self.decode_insert(network, depths, insert_forced, generator)
        decoded = self._actions(scale_choices, insert_choices)
        return decoded, lp_scale + lp_insert, ent_scale + ent_insert

    def _forced(self, actions: list[Action]) -> tuple[Tensor, dict[str, Tensor]]:
        """Stored actions as choice tensors; fields unused by an action's kind read 0."""
        for action in actions:
            if len(action.scale_channel) != self.groups or len(action.scale_width) != self.groups:
                raise ValueError(f"action has {len(action.scale_channel)} scale groups, policy {self.groups}")
            if action.kind not in (INSERT, KEEP, REMOVE):
                raise ValueError(f"unknown action kind {action.kind}")
        scale = torch.tensor([list(zip(a.scale_channel, a.scale_width)) for a in actions], dtype=torch.long)
        if bool(((scale < 0) | (scale >= SCALE_OPTIONS)).any()):
            raise ValueError("scale choices must be 0, 1 or 2")
        insert = {
            "kind": torch.tensor([a.kind for a in actions]),
            "position": torch.tensor([a.position if a.kind != KEEP else 0 for a in actions]),
            "src2": torch.tensor([a.src2 if a.kind == INSERT else 0 for a in actions]),
        }
        for name, n in self.fields:
            values = [a.insert[name] if a.kind == INSERT else 0 for a in actions]
            if any(not 0 <= v < n for v in values):
                raise ValueError(f"insert field {name!r} must be in 0..{n - 1}")
            insert[name] = torch.tensor(values, dtype=torch.long)
        for name in ("position", "src2"):
            if bool(((insert[name] < 0) | (insert[name] >= self.positions)).any()):
                raise ValueError(f"{name} must be in 0..{self.positions - 1}")
        return scale, insert

    def _actions(self, scale: Tensor, insert: dict[str, Tensor]) -> list[Action]:
        scale_rows = scale.tolist()
        columns = {name: t.tolist() for name, t in insert.items()}
        actions = []
        for b, groups in enumerate(scale_rows):
            kind = columns["kind"][b]
            actions.append(
                Action(
                    scale_channel=tuple(g[0] for g in groups),
                    scale_width=tuple(g[1] for g in groups),
                    kind=kind,
                    position=columns["position"][b] if kind != KEEP else 0,
                    src2=columns["src2"][b] if kind == INSERT else 0,
                    insert={name: columns[name][b] for name, _ in self.fields} if kind == INSERT else {},
                )
            )
        return actions


def make_optimizer(policy: Policy) -> torch.optim.Adam:
    """Adam over the policy's parameters, lr = ``spec.learning_rate`` (EPNAS §4.1: 6e-4)."""
    return torch.optim.Adam(policy.parameters(), lr=policy.spec.learning_rate)
