"""Resource metrics, analytic from the architecture (supplement §3, RENA App. A).

Batch 1, float32 (4 bytes).  For every unit (a layer, a cell op, the stem, the head):

* **model size** ``params`` = number of trainable parameters (exactly what the
  builder's ``nn.Module`` holds); ``size_bytes = 4 · params``.
* **FLOPs**: a multiply–add is 2, so a matrix product ``(m×n)·(n×p)`` is ``2mnp`` and a
  convolution with ``Cin`` input channels, ``k_h×k_w`` kernel and output
  ``(Cout, H', W')`` is ``2·Cin·k_h·k_w·Cout·H'·W'`` (depthwise: ``Cout = 1`` per channel).
  Every point-wise op is 1 per element it writes: activation (crelu writes 2C),
  batch-norm, bias, the ``add`` merge, and the GRU's gate arithmetic
  (``17·hidden`` per step and direction: 6 bias adds and 11 gate ops).  A pooling
  window of ``k`` elements costs ``k`` per output element; resampling a skip input
  costs ``max(elements read, elements written)``; global average pooling costs 1 per
  element read; zero-padding, concatenation and dropout (identity at inference) cost 0.
* **bytes moved**: each unit reads its weights and its inputs and writes its output
  once: ``4 · (params + input elements + output elements)``.
* **compute intensity** = total FLOPs / total bytes moved (FLOPs per byte).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from epnas.arch import (
    Arch,
    Branch,
    Layer,
    Node,
    Shape,
    Stack,
    branch_ops,
    branch_out_channels,
    cell_output_branches,
    same_out,
    stage_channels,
    trace_layers,
)

BYTES_PER_VALUE = 4
GRU_POINTWISE_PER_HIDDEN = 17


@dataclass(frozen=True)
class Cost:
    """Parameters, FLOPs and elements read (inputs) and written (output) by one unit."""

    params: int = 0
    flops: int = 0
    read: int = 0
    write: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.flops + other.flops, self.read + other.read, self.write + other.write)

    @property
    def bytes_moved(self) -> int:
        return BYTES_PER_VALUE * (self.params + self.read + self.write)


@dataclass(frozen=True)
class Metrics:
    """What the constraints are checked against; names match the spec's ``metric`` values."""

    params: int
    size_bytes: int
    flops: int
    bytes_moved: int
    compute_intensity: float

    def value(self, metric: str) -> float:
        """The value a constraint on ``metric`` (``modelSize`` | ``flops`` | ``computeIntensity``) reads."""
        return {"modelSize": self.params, "flops": self.flops, "computeIntensity": self.compute_intensity}[metric]

    def as_dict(self) -> dict:
        return asdict(self)


def numel(shape: Shape | None) -> int:
    return 0 if shape is None else math.prod(shape)


def act_channels(channels: int, activation: str | None) -> int:
    """Channels an activation writes: ``crelu`` concatenates relu(x) and relu(−x)."""
    return 2 * channels if activation == "crelu" else channels


def conv_cost(c_in: int, c_out: int, kh: int, kw: int, out_hw: int, activation: str | None, separable: bool = False) -> Cost:
    """activation → conv (or depthwise k×k + pointwise 1×1) → batch-norm; ``out_hw`` = H'·W'.

    The activation runs on the input (``in_hw`` is folded into ``read``/flops by callers).
    """
    c_act = act_channels(c_in, activation)
    if separable:
        params = c_act * kh * kw + c_act * c_out
        flops = 2 * c_act * kh * kw * out_hw + 2 * c_act * c_out * out_hw
    else:
        params = c_act * kh * kw * c_out
        flops = 2 * c_act * kh * kw * c_out * out_hw
    return Cost(params=params + 2 * c_out, flops=flops + c_out * out_hw, write=c_out * out_hw)


def merge_cost(node: Node) -> int:
    """FLOPs of resampling ``src2`` to ``src1``'s size and of an ``add`` merge."""
    if node.src2 is None:
        return 0
    flops = 0
    if node.src2[1:] != node.src1[1:]:
        flops += max(numel(node.src2), node.src2[0] * node.src1[1] * node.src1[2])
    if node.layer.merge == "add":
        flops += numel(node.merged)
    return flops


def layer_cost(node: Node, space: str) -> Cost:
    """Cost of one layer of a layer graph, merge included."""
    layer: Layer = node.layer
    c, h, w = node.merged
    out = node.out
    read = numel(node.src1) + numel(node.src2)
    base = Cost(flops=merge_cost(node), read=read)
    act_flops = act_channels(c, layer.activation) * h * w if layer.activation else 0
    op = layer.op
    if op == "add":
        unit = Cost(write=numel(out))
    elif op in ("maxpool", "avgpool"):
        window = layer.width * (layer.freq_width if space == "kws-layer" else layer.width)
        unit = Cost(flops=window * numel(out), write=numel(out))
    elif op in ("conv2d", "dep-sep-conv2d", "dilated-conv2d"):
        kh, kw = (layer.width, layer.width) if space == "image-layer" else (layer.width, layer.freq_width)
        unit = conv_cost(c, out[0], kh, kw, out[1] * out[2], layer.activation, separable=op == "dep-sep-conv2d")
        unit = unit + Cost(flops=act_flops)
    elif op == "gru":
        unit = gru_cost(features=c * w, steps=h, hidden=layer.channels, directions=layer.directions)
    elif op == "fc":
        n_in = c * h * w
        unit = Cost(params=n_in * out[0] + out[0], flops=act_flops + 2 * n_in * out[0] + out[0], write=out[0])
    else:  # validated architectures never get here
        raise ValueError(f"unknown op {op!r}")
    return base + unit


def gru_cost(features: int, steps: int, hidden: int, directions: int) -> Cost:
    """GRU: per step and direction ``2·in·3h + 2·h·3h`` matmul FLOPs plus ``17h`` point-wise."""
    params = directions * (3 * hidden * features + 3 * hidden * hidden + 6 * hidden)
    per_step = 2 * features * 3 * hidden + 2 * hidden * 3 * hidden + GRU_POINTWISE_PER_HIDDEN * hidden
    return Cost(params=params, flops=directions * steps * per_step, write=directions * hidden * steps)


def head_cost(body_out: Shape, num_classes: int) -> Cost:
    """Global average pool (1 per element read) → linear with bias."""
    c = body_out[0]
    return Cost(
        params=c * num_classes + num_classes,
        flops=numel(body_out) + 2 * c * num_classes + num_classes,
        read=numel(body_out),
        write=num_classes,
    )


def branch_op_cost(op: str, branch: Branch, c_in: int, hw: int) -> Cost:
    """One op of a cell branch on an input with ``c_in`` channels and ``hw`` pixels (stride 1)."""
    if op == "none":
        return Cost()
    if op in ("maxpool", "avgpool"):
        return Cost(flops=branch.pool**2 * c_in * hw, read=c_in * hw, write=c_in * hw)
    act_flops = act_channels(c_in, branch.activation) * hw
    if op == "conv":
        conv = conv_cost(c_in, branch.channels, branch.width, branch.width, hw, branch.activation)
        return conv + Cost(flops=act_flops, read=c_in * hw)
    # "1x7-7x1": activation → 1×7 conv → 7×1 conv → batch-norm
    c_act = act_channels(c_in, branch.activation)
    c = branch.channels
    params = c_act * 7 * c + c * 7 * c + 2 * c
    flops = act_flops + 2 * c_act * 7 * c * hw + 2 * c * 7 * c * hw + c * hw
    return Cost(params=params, flops=flops, read=c_in * hw, write=c * hw)


def cell_cost(arch: Arch, c_in: int, c_out: int, hw: int) -> Cost:
    """One cell: every branch op, then the relu → 1×1 conv → batch-norm projection."""
    sources = [c_in]
    total = Cost()
    for branch in arch.cell.branches:
        first, second = branch_ops(branch.type)
        total = total + branch_op_cost(first, branch, sources[branch.src1], hw)
        if second != "none":
            total = total + branch_op_cost(second, branch, sources[branch.src2], hw)
        sources.append(branch_out_channels(branch, sources))
    concat = sum(sources[j + 1] for j in cell_output_branches(arch.cell))
    projection = conv_cost(concat, c_out, 1, 1, hw, "relu") + Cost(flops=concat * hw, read=concat * hw)
    return total + projection


def module_costs(arch: Arch, input_shape: Shape) -> tuple[list[Cost], Shape]:
    """Costs of stem, cells and reductions of a stacked cell network, and the body's output shape."""
    stack = arch.stack or Stack()
    c, h, w = input_shape
    stem_c = stack.stem_channels
    costs = [conv_cost(c, stem_c, 3, 3, h * w, None) + Cost(read=c * h * w)]
    c_prev = stem_c
    for stage in range(stack.stages):
        if stage > 0:  # 2×2 max-pool, stride 2
            h_in, w_in = h, w
            h, w = same_out(h, 2), same_out(w, 2)
            costs.append(Cost(flops=4 * c_prev * h * w, read=c_prev * h_in * w_in, write=c_prev * h * w))
        c_out = stage_channels(stack, stage)
        for _ in range(stack.cells_per_stage):
            costs.append(cell_cost(arch, c_prev, c_out, h * w))
            c_prev = c_out
    return costs, (c_prev, h, w)


def unit_costs(arch: Arch, input_shape: Shape, num_classes: int) -> list[Cost]:
    """Every unit's cost, body then head."""
    if arch.layers is not None:
        nodes = trace_layers(arch, input_shape)
        costs = [layer_cost(n, arch.space) for n in nodes]
        body_out = nodes[-1].out
    else:
        costs, body_out = module_costs(arch, input_shape)
    return costs + [head_cost(body_out, num_classes)]


def compute_metrics(arch: Arch, input_shape: Shape, num_classes: int) -> Metrics:
    """Model size, FLOPs, bytes moved and compute intensity of a validated ``arch``."""
    total = Cost()
    moved = 0
    for cost in unit_costs(arch, tuple(input_shape), num_classes):
        total = total + cost
        moved += cost.bytes_moved
    return Metrics(
        params=total.params,
        size_bytes=BYTES_PER_VALUE * total.params,
        flops=total.flops,
        bytes_moved=moved,
        compute_intensity=total.flops / moved if moved else 0.0,
    )
