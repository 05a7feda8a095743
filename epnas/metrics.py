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

Each op's own cost is declared with the op (``epnas.ops``: ``LAYER_OPS``, ``BRANCH_OPS``,
the ``Cost`` primitives); this module adds what lies between ops — merges, the inputs a
layer reads, the stem, the reductions, the cell projection and the head — and totals them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from epnas.arch import (
    Arch,
    Node,
    Shape,
    Stack,
    branch_inputs,
    branch_out_channels,
    cell_output_branches,
    stage_channels,
    trace_layers,
)
from epnas.ops import BYTES_PER_VALUE, Cost, as_shape, branch_op, conv_cost, layer_op, numel, same_out


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
    """Cost of one layer of a layer graph: reading both inputs, the merge (``merge_cost``),
    then the op's own cost (``epnas.ops.LAYER_OPS``) on the merged input."""
    base = Cost(flops=merge_cost(node), read=numel(node.src1) + numel(node.src2))
    return base + layer_op(space, node.layer.op).cost(node.layer, node.merged)


def head_cost(body_out: Shape, num_classes: int) -> Cost:
    """Global average pool (1 per element read) → linear with bias."""
    c = body_out[0]
    return Cost(
        params=c * num_classes + num_classes,
        flops=numel(body_out) + 2 * c * num_classes + num_classes,
        read=numel(body_out),
        write=num_classes,
    )


def cell_cost(arch: Arch, c_in: int, c_out: int, hw: int) -> Cost:
    """One cell: every branch op (``epnas.ops.BRANCH_OPS``, each reading its source), then the
    relu → 1×1 conv → batch-norm projection of the concatenated outputs."""
    assert arch.cell is not None, "cell_cost takes a module-space architecture"
    sources = [c_in]
    total = Cost()
    for branch in arch.cell.branches:
        for op, src in branch_inputs(branch):
            total = total + branch_op(op).cost(branch, sources[src], hw)
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
    for cost in unit_costs(arch, as_shape(input_shape), num_classes):
        total = total + cost
        moved += cost.bytes_moved
    return Metrics(
        params=total.params,
        size_bytes=BYTES_PER_VALUE * total.params,
        flops=total.flops,
        bytes_moved=moved,
        compute_intensity=total.flops / moved if moved else 0.0,
    )
