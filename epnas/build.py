"""Architecture + input shape + classes → ``torch.nn.Module``.

Decode, then build: ``epnas.arch`` has already validated the architecture and
``trace_layers`` worked out every shape; each op's module comes from its declaration in
``epnas.ops`` (made of the blocks below); this module only instantiates and wires.

Parameter names encode (layer index, op type) so the shared weight dictionary can
key on them::

    body.<i>_<op>.op.<tensor>                       layer i of a layer graph
    stem.conv.weight, stem.bn.weight                stem of a cell network
    cells.s<stage>c<k>.b<j>_<type>.op<1|2>.<tensor> branch j of cell k in a stage
    cells.s<stage>c<k>.proj.<tensor>                the cell's 1×1 projection
    head.fc.weight, head.fc.bias                    the classifier
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from epnas.arch import (
    Arch,
    Branch,
    Stack,
    branch_inputs,
    branch_out_channels,
    cell_output_branches,
    stage_channels,
    trace_layers,
)
from epnas.ops import act_channels, as_shape, branch_op, layer_op, same_pad


class Activation(nn.Module):
    """relu, crelu (``cat(relu(x), relu(−x))``, doubles channels), elu, selu, swish (``x·σ(x)``)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "crelu":
            return torch.cat([F.relu(x), F.relu(-x)], dim=1)
        functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "relu": F.relu,
            "elu": F.elu,
            "selu": F.selu,
            "swish": F.silu,
        }
        return functions[self.name](x)


def pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], value: float = 0.0) -> torch.Tensor:
    """TensorFlow SAME padding, so a stride ``s`` maps ``H`` to ``ceil(H/s)``."""
    top, bottom = same_pad(x.shape[-2], kernel[0], stride[0])
    left, right = same_pad(x.shape[-1], kernel[1], stride[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class ConvUnit(nn.Module):
    """activation → SAME conv (or depthwise + pointwise) → batch-norm."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        dilation: int = 1,
        activation: str | None = "relu",
        separable: bool = False,
    ):
        super().__init__()
        self.act = Activation(activation) if activation else nn.Identity()
        c_act = act_channels(c_in, activation)
        self.window = (dilation * (kernel[0] - 1) + 1, dilation * (kernel[1] - 1) + 1)
        self.stride = stride
        if separable:
            self.dw = nn.Conv2d(c_act, c_act, kernel, stride, groups=c_act, bias=False)
            self.pw = nn.Conv2d(c_act, c_out, 1, bias=False)
        else:
            self.conv = nn.Conv2d(c_act, c_out, kernel, stride, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(self.act(x), self.window, self.stride)
        x = self.pw(self.dw(x)) if hasattr(self, "dw") else self.conv(x)
        return self.bn(x)


class Pool(nn.Module):
    """SAME-padded max or average pooling (max pads with −inf, average with zeros)."""

    def __init__(self, kind: str, kernel: tuple[int, int], stride: tuple[int, int]):
        super().__init__()
        self.kind, self.kernel, self.stride = kind, kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "maxpool":
            return F.max_pool2d(pad_same(x, self.kernel, self.stride, float("-inf")), self.kernel, self.stride)
        return F.avg_pool2d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Merge(nn.Module):
    """Resample ``b`` to ``a``'s spatial size (adaptive average), then add (zero-padding channels) or concat."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if b is None:
            return a
        if b.shape[-2:] != a.shape[-2:]:  # sizes as ints: a network's input size is fixed, so exports see constants
            b = F.adaptive_avg_pool2d(b, (int(a.shape[-2]), int(a.shape[-1])))
        if self.mode == "concat":
            return torch.cat([a, b], dim=1)
        gap = a.shape[1] - b.shape[1]
        if gap > 0:
            b = F.pad(b, (0, 0, 0, 0, 0, gap))
        elif gap < 0:
            a = F.pad(a, (0, 0, 0, 0, 0, -gap))
        return a + b


class GRU(nn.Module):
    """A GRU written with ``F.linear`` (so FLOP counters see its matmuls); PyTorch's gate layout.

    Input ``(N, C, T, F)`` is read as ``T`` steps of ``C·F`` features; output is
    ``(N, hidden·directions, T, 1)``.
    """

    def __init__(self, features: int, hidden: int, directions: int):
        super().__init__()
        self.hidden, self.directions = hidden, directions
        bound = 1 / math.sqrt(hidden)
        for d in range(directions):
            for name, shape in (
                ("w_ih", (3 * hidden, features)),
                ("w_hh", (3 * hidden, hidden)),
                ("b_ih", (3 * hidden,)),
                ("b_hh", (3 * hidden,)),
            ):
                self.register_parameter(f"{name}_{d}", nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, f = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(n, t, c * f)
        outputs = [self._direction(seq, d) for d in range(self.directions)]
        return torch.cat(outputs, dim=2).permute(0, 2, 1).unsqueeze(-1)

    def _direction(self, seq: torch.Tensor, d: int) -> torch.Tensor:
        gi = F.linear(seq, getattr(self, f"w_ih_{d}"), getattr(self, f"b_ih_{d}"))
        w_hh, b_hh = getattr(self, f"w_hh_{d}"), getattr(self, f"b_hh_{d}")
        h = seq.new_zeros(seq.shape[0], self.hidden)
        steps = range(seq.shape[1]) if d == 0 else reversed(range(seq.shape[1]))
        out: list[torch.Tensor] = [None] * seq.shape[1]  # type: ignore[list-item]
        for step in steps:
            gh = F.linear(h, w_hh, b_hh)
            i_r, i_z, i_n = gi[:, step].chunk(3, dim=1)
            h_r, h_z, h_n = gh.chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            candidate = torch.tanh(i_n + r * h_n)
            h = (1 - z) * candidate + z * h
            out[step] = h
        return torch.stack(out, dim=1)


class FullyConnected(nn.Module):
    """activation → flatten → linear; output ``(N, units, 1, 1)``."""

    def __init__(self, features: int, units: int, activation: str | None):
        super().__init__()
        self.act = Activation(activation) if activation else nn.Identity()
        self.fc = nn.Linear(features, units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(x).flatten(1)).unsqueeze(-1).unsqueeze(-1)


class LayerBlock(nn.Module):
    """One layer: merge its sources, apply the op, then dropout when ``keep < 1``."""

    def __init__(self, merge: Merge, op: nn.Module, keep: float | None):
        super().__init__()
        self.merge, self.op = merge, op
        self.drop = nn.Dropout(1 - keep) if keep is not None and keep < 1 else nn.Identity()

    def forward(self, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return self.drop(self.op(self.merge(a, b)))


class Head(nn.Module):
    """Global average pooling → linear to the classes."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class LayerNet(nn.Module):
    """A layer-by-layer network: ``body`` in order, each layer reading ``src1``/``src2`` tensors."""

    def __init__(self, arch: Arch, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        nodes = trace_layers(arch, input_shape)
        self.sources = [(n.layer.src1, n.layer.src2) for n in nodes]
        self.body = nn.ModuleDict(
            {
                f"{n.index}_{n.layer.op}": LayerBlock(
                    Merge(n.layer.merge), layer_op(arch.space, n.layer.op).module(n.layer, n.merged), n.layer.keep
                )
                for n in nodes
            }
        )
        self.head = Head(nodes[-1].out[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = [x]
        for block, (src1, src2) in zip(self.body.values(), self.sources):
            tensors.append(block(tensors[src1], tensors[src2] if src2 is not None else None))
        return self.head(tensors[-1])


class BranchOps(nn.Module):
    """One cell branch: ``op1`` on Src1, ``op2`` (if any) on Src2, outputs concatenated."""

    def __init__(self, branch: Branch, sources: list[int]):
        super().__init__()
        # a second op reads src2 (validation requires it); 0, as in ``branch_inputs``, where there is none
        self.src1, self.src2 = branch.src1, branch.src2 if branch.src2 is not None else 0
        ops = [branch_op(op).module(branch, sources[src]) for op, src in branch_inputs(branch)]
        self.op1 = ops[0]
        self.op2 = ops[1] if len(ops) > 1 else None

    def forward(self, sources: list[torch.Tensor]) -> torch.Tensor:
        out = self.op1(sources[self.src1])
        return out if self.op2 is None else torch.cat([out, self.op2(sources[self.src2])], dim=1)


class Conv1x7(nn.Module):
    """activation → 1×7 conv → 7×1 conv → batch-norm (SAME, stride 1)."""

    def __init__(self, c_in: int, c_out: int, activation: str):
        super().__init__()
        self.act = Activation(activation)
        self.conv1 = nn.Conv2d(act_channels(c_in, activation), c_out, (1, 7), bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, (7, 1), bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pad_same(self.act(x), (1, 7), (1, 1)))
        return self.bn(self.conv2(pad_same(x, (7, 1), (1, 1))))


class CellBlock(nn.Module):
    """A cell: its branches over sources (cell input, branch outputs), concat, 1×1 projection."""

    def __init__(self, arch: Arch, c_in: int, c_out: int):
        super().__init__()
        assert arch.cell is not None, "a cell network's architecture has a cell"
        sources = [c_in]
        branches = {}
        for j, branch in enumerate(arch.cell.branches):
            branches[f"b{j}_{branch.type}"] = BranchOps(branch, sources)
            sources.append(branch_out_channels(branch, sources))
        self.branches = nn.ModuleDict(branches)
        self.outputs = cell_output_branches(arch.cell)
        self.proj = ConvUnit(sum(sources[j + 1] for j in self.outputs), c_out, (1, 1), activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sources = [x]
        for branch in self.branches.values():
            sources.append(branch(sources))
        return self.proj(torch.cat([sources[j + 1] for j in self.outputs], dim=1))


class CellNet(nn.Module):
    """Stem → stages of cells with a stride-2 max-pool between stages → head."""

    def __init__(self, arch: Arch, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        stack = arch.stack or Stack()
        self.stem = ConvUnit(input_shape[0], stack.stem_channels, (3, 3), activation=None)
        cells: dict[str, nn.Module] = {}
        c_prev = stack.stem_channels
        for stage in range(stack.stages):
            if stage > 0:
                cells[f"s{stage}reduce"] = Pool("maxpool", (2, 2), (2, 2))
            for k in range(stack.cells_per_stage):
                c_out = stage_channels(stack, stage)
                cells[f"s{stage}c{k}"] = CellBlock(arch, c_prev, c_out)
                c_prev = c_out
        self.cells = nn.ModuleDict(cells)
        self.head = Head(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells.values():
            x = cell(x)
        return self.head(x)


def build_model(arch: Arch, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The ``nn.Module`` for a validated ``arch`` on inputs ``(C, H, W)`` with ``num_classes`` outputs."""
    if arch.layers is not None:
        return LayerNet(arch, as_shape(input_shape), num_classes)
    return CellNet(arch, as_shape(input_shape), num_classes)
