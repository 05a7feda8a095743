"""Architectures: layer-by-layer graphs and cells stacked into a network.

Grammar of a layer-by-layer graph (``image-layer``, ``kws-layer``)::

    tensors  t_0 = network input,  t_{i+1} = output of layer i
    layer i  x = t[src1]                         (0 <= src1 <= i)
             if src2 is set (0 <= src2 <= i):    x = merge(x, resample(t[src2]))
             t_{i+1} = op(x)

* ``resample`` average-pools (or repeats) ``t[src2]`` to ``t[src1]``'s spatial size.
* ``merge == "add"`` zero-pads the narrower tensor's channels to the wider one
  (no parameters) and adds; ``"concat"`` stacks channels.
* Every convolution and pooling uses TensorFlow's SAME padding, so a stride ``s``
  maps ``H`` to ``ceil(H / s)``.  Image pools have stride 2; convolutions stride 1.
* A conv layer is activation → convolution → batch-norm (supplement §4); ``crelu``
  doubles the channels the convolution reads.
* KWS: a ``gru`` reads the tensor ``(C, T, F)`` as ``T`` steps of ``C·F`` features and
  writes ``(hidden·directions, T, 1)``; an ``fc`` flattens and writes ``(units, 1, 1)``;
  ``avgpool`` has kernel = stride = ``(width, freq_width)``.
* The head is global average pooling → linear to the classes.

Grammar of a cell (``image-module``): sources ``s_0`` = cell input, ``s_{j+1}`` =
output of branch j; branch j of type ``a-b`` computes ``concat(a(s[src1]), b(s[src2]))``
(``b == none``: ``a(s[src1])`` alone), every op stride 1.  The cell's output is the
concatenation of the branches with ``propagate`` set (the last branch when none is),
projected by relu → 1×1 conv → batch-norm to the stage's channel count.  The network
is a 3×3 conv stem → ``stages`` × ``cells_per_stage`` cells, channels doubling and a
2×2 max-pool (stride 2) between stages → head.
"""

from __future__ import annotations

import hashlib
import json
import math
import random as _random
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from epnas.errors import Problem, SpecError
from epnas.ops import BRANCH_OPS, NO_OP, OP_FIELDS, Shape, as_shape, branch_op, field_values, layer_op, same_out
from epnas.space import LayerSpace, ModuleSpace, get_space


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Layer(_Frozen):
    """One layer of a layer-by-layer graph; which fields an op needs is in ``epnas.ops.LAYER_OPS``."""

    op: str
    src1: int
    src2: int | None = None
    merge: Literal["add", "concat"] = "add"
    channels: int | None = None
    width: int | None = None
    freq_width: int | None = None
    stride_time: int | None = None
    stride_freq: int | None = None
    dilation: int | None = None
    activation: str | None = None
    directions: int | None = None
    keep: float | None = None


class Branch(_Frozen):
    """One branch of a cell (``type`` is ``a-b`` from the module space)."""

    type: str
    src1: int
    src2: int | None = None
    channels: int
    width: int
    pool: int = 2
    activation: str = "relu"
    propagate: bool = True


class Cell(_Frozen):
    branches: tuple[Branch, ...]


class Stack(_Frozen):
    """How a cell is stacked into a network."""

    stem_channels: int = Field(16, gt=0)
    stages: int = Field(2, gt=0)
    cells_per_stage: int = Field(1, gt=0)


class Arch(_Frozen):
    """A network architecture: ``layers`` for layer spaces, ``cell`` + ``stack`` for module spaces."""

    space: str
    layers: tuple[Layer, ...] | None = None
    cell: Cell | None = None
    stack: Stack | None = None

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, unset fields omitted (round-trip stable)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the JSON of ``canonical(self)``: two
        architectures that compute the same function the same way hash alike."""
        text = json.dumps(
            canonical(self).model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def depth(self) -> int:
        """Number of layers, or branches of the cell."""
        return len(self.layers) if self.layers is not None else len(self.cell.branches) if self.cell else 0


# ---------------------------------------------------------------- validation

_INT_FIELDS = ("channels", "width", "freq_width", "stride_time", "stride_freq", "dilation", "directions")


def parse_arch(data: Any) -> Arch:
    """Decode and validate an architecture from a dict, JSON text or ``Arch``.

    Raises ``SpecError`` listing every problem (``layers[3].src1: …``); nothing else escapes.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise SpecError.one("arch", f"not valid JSON: {err}") from None
    if isinstance(data, Arch):
        arch = data
    else:
        try:
            arch = Arch.model_validate(data)
        except pydantic.ValidationError as err:
            raise SpecError(pydantic_problems(err)) from None
    validate_arch(arch)
    return arch


def pydantic_problems(err: pydantic.ValidationError, prefix: str = "") -> list[Problem]:
    """One ``Problem`` per pydantic error, its location written as ``a.b[0].c``."""
    problems = []
    for item in err.errors():
        path = prefix
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        problems.append(Problem(path, item["msg"].removeprefix("Value error, ")))
    return problems


def validate_arch(arch: Arch) -> None:
    """Check ``arch`` against its space's grammar; raise ``SpecError`` with every problem."""
    try:
        space = get_space(arch.space)
    except SpecError as err:
        raise SpecError([Problem("space", err.problems[0].message)]) from None
    problems = _layer_problems(arch, space) if isinstance(space, LayerSpace) else _cell_problems(arch, space)
    if problems:
        raise SpecError(problems)


def _layer_problems(arch: Arch, space: LayerSpace) -> list[Problem]:
    if arch.layers is None or arch.cell is not None:
        return [Problem("layers", f"space {space.name} needs 'layers' and no 'cell'")]
    if not 1 <= len(arch.layers) <= space.max_layers:
        return [Problem("layers", f"needs 1 to {space.max_layers} layers, got {len(arch.layers)}")]
    problems: list[Problem] = []
    fields = OP_FIELDS[space.name]
    for i, layer in enumerate(arch.layers):
        where = f"layers[{i}]"
        if layer.op not in fields:
            problems.append(Problem(f"{where}.op", f"unknown op {layer.op!r}; one of {', '.join(fields)}"))
            continue
        for name, src in (("src1", layer.src1), ("src2", layer.src2)):
            if src is not None and not 0 <= src <= i:
                problems.append(Problem(f"{where}.{name}", f"{src} out of range 0..{i}"))
        for name in fields[layer.op]:
            if getattr(layer, name) is None:
                problems.append(Problem(f"{where}.{name}", f"required for op {layer.op}"))
        problems += _value_problems(where, layer, space.activations)
    return problems


def _value_problems(where: str, item: BaseModel, activations: tuple[str, ...]) -> list[Problem]:
    problems = []
    for name in _INT_FIELDS + ("pool",):
        value = getattr(item, name, None)
        if value is not None and value <= 0:
            problems.append(Problem(f"{where}.{name}", f"must be positive, got {value}"))
    directions = getattr(item, "directions", None)
    if directions is not None and directions not in (1, 2):
        problems.append(Problem(f"{where}.directions", f"must be 1 or 2, got {directions}"))
    keep = getattr(item, "keep", None)
    if keep is not None and not 0 < keep <= 1:
        problems.append(Problem(f"{where}.keep", f"keep probability must be in (0, 1], got {keep}"))
    activation = getattr(item, "activation", None)
    if activation is not None and activation not in activations:
        problems.append(
            Problem(f"{where}.activation", f"unknown activation {activation!r}; one of {', '.join(activations)}")
        )
    return problems


def _cell_problems(arch: Arch, space: ModuleSpace) -> list[Problem]:
    if arch.cell is None or arch.layers is not None:
        return [Problem("cell", f"space {space.name} needs 'cell' and no 'layers'")]
    branches = arch.cell.branches
    if not 1 <= len(branches) <= space.max_branches:
        return [Problem("cell.branches", f"needs 1 to {space.max_branches} branches, got {len(branches)}")]
    problems: list[Problem] = []
    for j, branch in enumerate(branches):
        where = f"cell.branches[{j}]"
        if branch.type not in space.branch_types:
            problems.append(
                Problem(f"{where}.type", f"unknown branch type {branch.type!r}; one of {', '.join(space.branch_types)}")
            )
            continue
        if not 0 <= branch.src1 <= j:
            problems.append(Problem(f"{where}.src1", f"{branch.src1} out of range 0..{j}"))
        if branch_ops(branch.type)[1] != NO_OP:
            if branch.src2 is None:
                problems.append(Problem(f"{where}.src2", f"required for branch type {branch.type}"))
            elif not 0 <= branch.src2 <= j:
                problems.append(Problem(f"{where}.src2", f"{branch.src2} out of range 0..{j}"))
        problems += _value_problems(where, branch, space.activations)
    return problems


def branch_ops(branch_type: str) -> tuple[str, str]:
    """``"conv-maxpool"`` → ``("conv", "maxpool")``; ``"1x7-7x1-none"`` → ``("1x7-7x1", "none")``."""
    first, _, second = branch_type.rpartition("-")
    return first, second


def branch_inputs(branch: Branch) -> list[tuple[str, int]]:
    """The branch's ops with the source each reads: ``[(a, src1)]``, and ``(b, src2)`` unless ``b`` is ``none``."""
    first, second = branch_ops(branch.type)
    inputs = [(first, branch.src1)]
    if second != NO_OP:
        inputs.append((second, branch.src2 if branch.src2 is not None else 0))
    return inputs


# ---------------------------------------------------------------- canonical form


def canonical(arch: Arch) -> Arch:
    """The same network with every field that cannot change what it computes normalised.

    Layer graphs: a layer without a skip has nothing to merge (``merge`` reads ``add``);
    an ``add`` layer without a skip is the identity and is removed (readers of its
    output read its input), as is a layer whose output nothing reads (not the last);
    the last layer is kept unless it is an identity of the layer before it.  Cells: a
    one-op branch has no ``src2``; a field no op of the branch reads (``epnas.ops.BRANCH_OPS``
    fields: ``width`` is a ``conv``'s, ``pool`` a pooling op's, ``channels`` and ``activation``
    the convolutions') reads 0 (``activation``: ``relu``).  The result is for hashing and
    comparison; it need not validate.
    """
    if arch.layers is not None:
        return arch.model_copy(update={"layers": _canonical_layers(list(arch.layers))})
    if arch.cell is None:
        return arch
    return arch.model_copy(
        update={
            "cell": Cell(branches=tuple(_canonical_branch(b) for b in arch.cell.branches)),
            "stack": arch.stack or Stack(),
        }
    )


def _canonical_layers(layers: list[Layer]) -> tuple[Layer, ...]:
    layers = [
        layer if layer.src2 is not None or layer.merge == "add" else layer.model_copy(update={"merge": "add"})
        for layer in layers
    ]
    while len(layers) > 1:
        last = len(layers) - 1
        read = {s for layer in layers for s in (layer.src1, layer.src2) if s is not None}
        drop = next(
            (
                i
                for i, layer in enumerate(layers)
                if (i < last and (i + 1 not in read or (layer.op == "add" and layer.src2 is None)))
                or (i == last and layer.op == "add" and layer.src2 is None and layer.src1 == i)
            ),
            None,
        )
        if drop is None:
            break
        layers = remove_layer_at(layers, drop)
    return tuple(layers)


def remove_layer_at(layers: list[Layer], position: int) -> list[Layer]:
    """Layers without layer ``position``: readers of its output (``t[position + 1]``) read its
    main input instead, and later references shift down by one."""
    removed = layers[position]
    out_index = position + 1
    kept = layers[:position]
    for old in layers[position + 1 :]:
        kept.append(
            old.model_copy(
                update={
                    "src1": _reindex(old.src1, out_index, removed.src1),
                    "src2": _reindex(old.src2, out_index, removed.src1),
                }
            )
        )
    return kept


def _reindex(src: int | None, removed: int, replacement: int) -> int | None:
    if src is None:
        return None
    if src == removed:
        return replacement
    return src - 1 if src > removed else src


def _canonical_branch(branch: Branch) -> Branch:
    ops = branch_ops(branch.type)
    read = {name for op in ops if op in BRANCH_OPS for name in BRANCH_OPS[op].fields}
    return branch.model_copy(
        update={
            "src2": branch.src2 if ops[1] != NO_OP else None,
            "width": branch.width if "width" in read else 0,
            "pool": branch.pool if "pool" in read else 0,
            "channels": branch.channels if "channels" in read else 0,
            "activation": branch.activation if "activation" in read else "relu",
        }
    )


# ---------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Node:
    """One layer of a traced layer graph: its raw inputs, merged input and output shapes."""

    index: int
    layer: Layer
    src1: Shape
    src2: Shape | None
    merged: Shape
    out: Shape


def merged_shape(a: Shape, b: Shape | None, merge: str) -> Shape:
    """Shape after resampling ``b`` to ``a``'s spatial size and merging (add: max channels)."""
    if b is None:
        return a
    channels = max(a[0], b[0]) if merge == "add" else a[0] + b[0]
    return (channels, a[1], a[2])


def trace_layers(arch: Arch, input_shape: Shape) -> list[Node]:
    """Shapes of every layer of a validated layer graph on ``input_shape`` (each op's
    ``out_shape`` in ``epnas.ops.LAYER_OPS``)."""
    assert arch.layers is not None, "trace_layers takes a layer graph"
    tensors: list[Shape] = [as_shape(input_shape)]
    nodes = []
    for i, layer in enumerate(arch.layers):
        a = tensors[layer.src1]
        b = tensors[layer.src2] if layer.src2 is not None else None
        merged = merged_shape(a, b, layer.merge)
        out = layer_op(arch.space, layer.op).out_shape(layer, merged)
        nodes.append(Node(i, layer, a, b, merged, out))
        tensors.append(out)
    return nodes


def branch_out_channels(branch: Branch, sources: list[int]) -> int:
    """Channels a branch writes, given the channel count of every source: the sum of its ops'
    ``out_channels`` (the outputs are concatenated)."""
    return sum(branch_op(op).out_channels(branch, sources[src]) for op, src in branch_inputs(branch))


def cell_output_branches(cell: Cell) -> list[int]:
    """Indices of the branches concatenated into the cell output."""
    chosen = [j for j, b in enumerate(cell.branches) if b.propagate]
    return chosen or [len(cell.branches) - 1]


def stage_channels(stack: Stack, stage: int) -> int:
    return stack.stem_channels * 2**stage


def output_shape(arch: Arch, input_shape: Shape) -> Shape:
    """Shape of the body's output (before the head) on ``input_shape``."""
    if arch.layers is not None:
        return trace_layers(arch, input_shape)[-1].out
    stack = arch.stack or Stack()
    h, w = input_shape[1], input_shape[2]
    for _ in range(1, stack.stages):
        h, w = same_out(h, 2), same_out(w, 2)
    return (stage_channels(stack, stack.stages - 1), h, w)


# ---------------------------------------------------------------- random


def random_arch(space_name: str, depth: int, rng: _random.Random) -> Arch:
    """A random valid architecture with ``depth`` layers (or branches) drawn from the space's tables."""
    space = get_space(space_name)
    if isinstance(space, ModuleSpace):
        depth = max(1, min(depth, space.max_branches))
        branches = tuple(random_branch(space, j, rng) for j in range(depth))
        return parse_arch(Arch(space=space.name, cell=Cell(branches=branches), stack=Stack()))
    depth = max(1, min(depth, space.max_layers))
    layers = tuple(random_layer(space, i, rng) for i in range(depth))
    return parse_arch(Arch(space=space.name, layers=layers))


def random_layer(space: LayerSpace, index: int, rng: _random.Random, op: str | None = None) -> Layer:
    """A random layer at ``index`` reading the previous tensor (``src1 = index``), no skip."""
    op = op or rng.choice(space.ops)
    params: dict[str, Any] = {"op": op, "src1": index}
    for name in OP_FIELDS[space.name][op]:
        params[name] = rng.choice(field_values(space, op, name))
    return Layer(**params)


def random_branch(space: ModuleSpace, index: int, rng: _random.Random) -> Branch:
    """A random branch at position ``index`` (sources 0..index)."""
    branch_type = rng.choice(space.branch_types)
    two_ops = branch_ops(branch_type)[1] != NO_OP
    return Branch(
        type=branch_type,
        src1=rng.randint(0, index),
        src2=rng.randint(0, index) if two_ops else None,
        channels=rng.choice(space.channels),
        width=rng.choice(space.widths),
        pool=rng.choice(space.pool_widths),
        activation=rng.choice(space.activations),
        propagate=bool(rng.getrandbits(1)),
    )


def with_channel_factor(arch: Arch, factor: float) -> Arch:
    """EcoNAS's channel-factor proxy: every channel count × ``factor``, rounded, at least 1."""
    if factor == 1:
        return arch

    def scale(value: int | None) -> int | None:
        return None if value is None else max(1, int(math.floor(value * factor + 0.5)))

    if arch.layers is not None:
        layers = tuple(layer.model_copy(update={"channels": scale(layer.channels)}) for layer in arch.layers)
        return arch.model_copy(update={"layers": layers})
    assert arch.cell is not None, "an architecture has layers or a cell"
    branches = tuple(b.model_copy(update={"channels": scale(b.channels)}) for b in arch.cell.branches)
    stack = (arch.stack or Stack()).model_copy(update={"stem_channels": scale((arch.stack or Stack()).stem_channels)})
    return arch.model_copy(update={"cell": Cell(branches=branches), "stack": stack})
