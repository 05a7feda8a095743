"""Morphing actions: scale, then insert / keep / remove (EPNAS §3.2, supplement §2).

An ``Action`` is a set of choice indices, exactly what the policy samples:

* scale: for each of F groups, a channel direction and a width direction, each
  ``0 = up, 1 = keep, 2 = down`` — one step along the space's ordered table, clamped.
  Layers (or cell branches) are split into F contiguous groups, ``group(i) = i·F // L``.
* insert: ``kind`` (``0 insert, 1 keep, 2 remove``); ``position`` (Src1) in
  ``0 … L+4`` — a position ``>= L`` appends at the end (removal: the last layer);
  ``src2`` in ``0 … position`` where ``src2 == position`` means no skip; then one index
  per entry of ``insert_fields(space)`` (op, channels, activation, width, pool,
  add-or-concat / propagate, and the KWS kernel, stride and GRU fields).

Every result validates.  An action that cannot apply (removing the only layer,
inserting past the space's maximum) degrades to keep, and ``MorphResult.degraded``
says so.  Pure: no I/O, no randomness.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from epnas.arch import Arch, Branch, Cell, Layer, _reindex, branch_ops, parse_arch, remove_layer_at
from epnas.ops import NO_OP, OP_FIELDS, field_choice, field_values, table
from epnas.space import LayerSpace, ModuleSpace, get_space, step_along

DIRECTIONS = (+1, 0, -1)
KINDS = ("insert", "keep", "remove")
EXTRA_POSITIONS = 5
LAYER_CHOICES = (
    "channels",
    "activation",
    "width",
    "merge",
    "pool",
    "freq_width",
    "stride_time",
    "stride_freq",
    "directions",
)
"""The insert decoder's choices for a layer after ``op``, in order; each indexes the space table
``epnas.ops.TABLES`` names (``merge``: add or concat), and one the space has no table for is left out."""


def insert_fields(space: LayerSpace | ModuleSpace) -> list[tuple[str, int]]:
    """The insert decoder's categorical fields after kind, Src1 and Src2: ``(name, options)``."""
    if isinstance(space, ModuleSpace):
        return [
            ("op", len(space.branch_types)),
            ("channels", len(space.channels)),
            ("activation", len(space.activations)),
            ("width", len(space.widths)),
            ("pool", len(space.pool_widths)),
            ("propagate", 2),
        ]
    sizes = ((name, 2 if name == "merge" else len(table(space, name))) for name in LAYER_CHOICES)
    return [("op", len(space.ops)), *((name, n) for name, n in sizes if n)]


def max_positions(space: LayerSpace | ModuleSpace) -> int:
    """``N_l``: the number of Src1/Src2 logits (maximum layers, or branches + 1)."""
    return space.max_layers + EXTRA_POSITIONS if isinstance(space, LayerSpace) else space.max_branches + 1


@dataclass(frozen=True)
class Action:
    """One morphing action as choice indices (see module docstring)."""

    scale_channel: tuple[int, ...]
    scale_width: tuple[int, ...]
    kind: int
    position: int = 0
    src2: int = 0
    insert: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Action:
        return cls(
            scale_channel=tuple(data["scale_channel"]),
            scale_width=tuple(data["scale_width"]),
            kind=data["kind"],
            position=data.get("position", 0),
            src2=data.get("src2", 0),
            insert=dict(data.get("insert", {})),
        )

    @property
    def kind_name(self) -> str:
        return KINDS[self.kind]


@dataclass(frozen=True)
class MorphResult:
    arch: Arch
    applied: str
    degraded: str | None = None


def group_of(index: int, count: int, groups: int) -> int:
    """Contiguous partition of ``count`` items into ``groups`` groups."""
    return index * groups // max(count, 1)


def apply_action(arch: Arch, action: Action) -> MorphResult:
    """Scale, then insert / keep / remove; always returns a valid architecture."""
    space = get_space(arch.space)
    scaled = scale(arch, action.scale_channel, action.scale_width)
    if isinstance(space, ModuleSpace):
        return _insert_remove_cell(scaled, space, action)
    return _insert_remove_layer(scaled, space, action)


# ---------------------------------------------------------------- scale


def scale(arch: Arch, channel: tuple[int, ...], width: tuple[int, ...]) -> Arch:
    """Step every layer's channels and widths of group f by ``DIRECTIONS[channel[f]]`` / ``[width[f]]``."""
    space = get_space(arch.space)
    groups = len(channel)
    if arch.layers is not None:
        assert isinstance(space, LayerSpace), "layers belong to a layer space"
        count = len(arch.layers)
        layers = tuple(
            _scale_layer(layer, space, DIRECTIONS[channel[g]], DIRECTIONS[width[g]])
            for i, layer in enumerate(arch.layers)
            for g in [group_of(i, count, groups)]
        )
        return arch.model_copy(update={"layers": layers})
    assert isinstance(space, ModuleSpace) and arch.cell is not None, "an architecture has layers or a cell"
    count = len(arch.cell.branches)
    branches = tuple(
        _scale_branch(branch, space, DIRECTIONS[channel[g]], DIRECTIONS[width[g]])
        for j, branch in enumerate(arch.cell.branches)
        for g in [group_of(j, count, groups)]
    )
    return arch.model_copy(update={"cell": Cell(branches=branches)})


def _scale_layer(layer: Layer, space: LayerSpace, dc: int, dw: int) -> Layer:
    """Channels step by ``dc``, widths (and KWS frequency widths) by ``dw``, each along its table."""
    steps = {"channels": dc, "width": dw, "freq_width": dw}
    update: dict[str, Any] = {
        name: step_along(field_values(space, layer.op, name), getattr(layer, name), direction)
        for name, direction in steps.items()
        if getattr(layer, name) is not None
    }
    return layer.model_copy(update=update)


def _scale_branch(branch: Branch, space: ModuleSpace, dc: int, dw: int) -> Branch:
    return branch.model_copy(
        update={
            "channels": step_along(space.channels, branch.channels, dc),
            "width": step_along(space.widths, branch.width, dw),
            "pool": step_along(space.pool_widths, branch.pool, dw),
        }
    )


# ---------------------------------------------------------------- layers


def _insert_remove_layer(arch: Arch, space: LayerSpace, action: Action) -> MorphResult:
    assert arch.layers is not None, "a layer space's architecture has layers"
    count = len(arch.layers)
    kind = action.kind_name
    if kind == "keep":
        return MorphResult(arch, "keep")
    if kind == "remove":
        if count <= 1:
            return MorphResult(arch, "keep", degraded="remove: the network has only one layer")
        return MorphResult(parse_arch(remove_layer(arch, min(action.position, count - 1))), "remove")
    if count >= space.max_layers:
        return MorphResult(arch, "keep", degraded=f"insert: the network already has {space.max_layers} layers")
    position = min(action.position, count)
    layer = decode_layer(space, action, position)
    return MorphResult(parse_arch(insert_layer(arch, position, layer)), "insert")


def decode_layer(space: LayerSpace, action: Action, position: int) -> Layer:
    """The layer an insert action describes, at ``position`` (reads ``t[position]``): each field of
    its op is ``field_values(...)[choice]`` of the choice that picks it (``field_choice``: a pooling
    width is the ``pool`` choice where the space has pooling widths, a dilation ``stride_freq``)."""
    choice = action.insert
    op = space.ops[choice["op"]]
    src2 = action.src2 if action.src2 < position else None
    params: dict[str, Any] = {"op": op, "src1": position, "src2": src2, "merge": ("add", "concat")[choice["merge"]]}
    for name in OP_FIELDS[space.name][op]:
        params[name] = field_values(space, op, name)[choice[field_choice(space, op, name)]]
    return Layer(**params)


def insert_layer(arch: Arch, position: int, layer: Layer) -> Arch:
    """Insert ``layer`` as layer ``position``; later layers whose main input was ``t[position]``
    now read the new layer, and references to later tensors shift by one."""
    assert arch.layers is not None, "insert_layer takes a layer graph"
    layers = list(arch.layers)
    rewired = [layer]
    for old in layers[position:]:
        src1 = position + 1 if old.src1 == position else old.src1 + (old.src1 > position)
        src2 = None if old.src2 is None else old.src2 + (old.src2 > position)
        rewired.append(old.model_copy(update={"src1": src1, "src2": src2}))
    return arch.model_copy(update={"layers": tuple(layers[:position] + rewired)})


def remove_layer(arch: Arch, position: int) -> Arch:
    """Remove layer ``position``: readers of its output read its main input instead."""
    assert arch.layers is not None, "remove_layer takes a layer graph"
    return arch.model_copy(update={"layers": tuple(remove_layer_at(list(arch.layers), position))})


# ---------------------------------------------------------------- cells


def _insert_remove_cell(arch: Arch, space: ModuleSpace, action: Action) -> MorphResult:
    assert arch.cell is not None, "a module space's architecture has a cell"
    count = len(arch.cell.branches)
    kind = action.kind_name
    if kind == "keep":
        return MorphResult(arch, "keep")
    if kind == "remove":
        if count <= 1:
            return MorphResult(arch, "keep", degraded="remove: the cell has only one branch")
        return MorphResult(parse_arch(remove_branch(arch, min(action.position, count - 1))), "remove")
    if count >= space.max_branches:
        return MorphResult(arch, "keep", degraded=f"insert: the cell already has {space.max_branches} branches")
    position = min(action.position, count)
    return MorphResult(parse_arch(insert_branch(arch, position, decode_branch(space, action, position))), "insert")


def decode_branch(space: ModuleSpace, action: Action, position: int) -> Branch:
    """The branch an insert action describes: Src1 is the source just before it (the previous
    branch, or the cell input), Src2 the sampled source."""
    choice = action.insert
    branch_type = space.branch_types[choice["op"]]
    two_ops = branch_ops(branch_type)[1] != NO_OP
    return Branch(
        type=branch_type,
        src1=position,
        src2=min(action.src2, position) if two_ops else None,
        channels=space.channels[choice["channels"]],
        width=space.widths[choice["width"]],
        pool=space.pool_widths[choice["pool"]],
        activation=space.activations[choice["activation"]],
        propagate=bool(choice["propagate"]),
    )


def insert_branch(arch: Arch, position: int, branch: Branch) -> Arch:
    """Insert ``branch`` at ``position``; the branch it reads stops propagating (EPNAS Fig. 3),
    and later sources shift by one."""
    assert arch.cell is not None, "insert_branch takes a cell"
    branches = list(arch.cell.branches)
    if position > 0:
        branches[position - 1] = branches[position - 1].model_copy(update={"propagate": False})
    shifted = [
        b.model_copy(
            update={
                "src1": b.src1 + (b.src1 > position),
                "src2": None if b.src2 is None else b.src2 + (b.src2 > position),
            }
        )
        for b in branches[position:]
    ]
    return arch.model_copy(update={"cell": Cell(branches=tuple(branches[:position] + [branch] + shifted))})


def remove_branch(arch: Arch, position: int) -> Arch:
    """Remove branch ``position``: readers of its output read its Src1 instead."""
    assert arch.cell is not None, "remove_branch takes a cell"
    branches = list(arch.cell.branches)
    removed = branches[position]
    kept = branches[:position]
    for b in branches[position + 1 :]:
        kept.append(
            b.model_copy(
                update={
                    "src1": _reindex(b.src1, position + 1, removed.src1),
                    "src2": _reindex(b.src2, position + 1, removed.src1),
                }
            )
        )
    return arch.model_copy(update={"cell": Cell(branches=tuple(kept))})


def random_action(arch: Arch, rng, groups: int = 4) -> Action:
    """A uniformly random action (the papers' random-search baseline): every choice uniform,
    Src1 over the ``L + 5`` allowed positions and Src2 over ``0 … Src1``."""
    space = get_space(arch.space)
    position = rng.randrange(arch.depth + EXTRA_POSITIONS)
    return Action(
        scale_channel=tuple(rng.randrange(3) for _ in range(groups)),
        scale_width=tuple(rng.randrange(3) for _ in range(groups)),
        kind=rng.randrange(3),
        position=position,
        src2=rng.randrange(position + 1),
        insert={name: rng.randrange(n) for name, n in insert_fields(space)},
    )
