"""The op registry: every op of the search spaces, declared once.

A **layer op** (``image-layer``, ``kws-layer``; ``LAYER_OPS[space][op]``) declares

* ``fields``: the ``Layer`` fields it needs, in order (validation requires them;
  ``random_layer`` and the insert decoder fill them from the value table ``field_values``
  names);
* ``out_shape(layer, x)``: its output shape on a merged input ``x = (C, H, W)``;
* ``cost(layer, x)``: its own parameters, FLOPs and elements written (``epnas.metrics``
  adds the merge and the inputs read);
* ``module(layer, x)``: its ``nn.Module``, made of ``epnas.build``'s blocks.

A **branch op** (``image-module``; ``BRANCH_OPS[op]``: ``conv``, ``maxpool``, ``avgpool``,
``1x7-7x1``; ``none`` is no op) declares the same for an input of ``c_in`` channels and
``hw`` pixels at stride 1: ``fields``, ``out_channels(branch, c_in)``,
``cost(branch, c_in, hw)`` (its input read included) and ``module(branch, c_in)``.

``epnas.arch`` (validation, shapes, canonical form), ``epnas.metrics`` (costs),
``epnas.build`` (modules), ``epnas.morph`` and ``epnas.policy`` (value tables) read this
registry.  The cost rules are ``epnas.metrics``'s (supplement §3): a multiply–add is 2
FLOPs, every point-wise op 1 per element it writes, a pooling window of ``k`` elements
``k`` per output element.  Pure: no I/O; torch is imported when the first module is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from epnas.errors import SpecError
from epnas.space import LayerSpace

if TYPE_CHECKING:
    from torch import nn

    from epnas.arch import Branch, Layer

Shape = tuple[int, int, int]
Pair = Callable[[Any], tuple[int, int]]

BYTES_PER_VALUE = 4
GRU_POINTWISE_PER_HIDDEN = 17
NO_OP = "none"


# ---------------------------------------------------------------- SAME padding


def same_out(size: int, stride: int) -> int:
    """Output length of a SAME-padded window: ``ceil(size / stride)``."""
    return -(-size // stride)


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) for one dimension."""
    total = max((same_out(size, stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# ---------------------------------------------------------------- costs


@dataclass(frozen=True)
class Cost:
    """Parameters, FLOPs and elements read (inputs) and written (output) by one unit."""

    params: int = 0
    flops: int = 0
    read: int = 0
    write: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.params + other.params, self.flops + other.flops, self.read + other.read, self.write + other.write
        )

    @property
    def bytes_moved(self) -> int:
        """``4 · (params + read + write)``: weights and inputs read once, the output written once."""
        return BYTES_PER_VALUE * (self.params + self.read + self.write)


def as_shape(values: Sequence[int]) -> Shape:
    """``values`` (``[C, H, W]`` from a spec or JSON, or a ``Shape``) as a ``Shape`` tuple."""
    c, h, w = values
    return (c, h, w)


def numel(shape: Shape | None) -> int:
    """Elements of a tensor of ``shape`` (0 for no tensor)."""
    return 0 if shape is None else math.prod(shape)


def act_channels(channels: int, activation: str | None) -> int:
    """Channels an activation writes: ``crelu`` concatenates relu(x) and relu(−x)."""
    return 2 * channels if activation == "crelu" else channels


def conv_cost(
    c_in: int, c_out: int, kh: int, kw: int, out_hw: int, activation: str | None, separable: bool = False
) -> Cost:
    """activation → conv (or depthwise k×k + pointwise 1×1) → batch-norm; ``out_hw`` = H'·W'.

    ``C = act_channels(c_in)``; params ``C·kh·kw·c_out`` (separable ``C·kh·kw + C·c_out``)
    ``+ 2·c_out``; FLOPs twice that product per output pixel ``+ c_out·out_hw`` (batch-norm).
    The activation's FLOPs and the input read are the caller's (they depend on the input size).
    """
    c_act = act_channels(c_in, activation)
    if separable:
        params = c_act * kh * kw + c_act * c_out
        flops = 2 * c_act * kh * kw * out_hw + 2 * c_act * c_out * out_hw
    else:
        params = c_act * kh * kw * c_out
        flops = 2 * c_act * kh * kw * c_out * out_hw
    return Cost(params=params + 2 * c_out, flops=flops + c_out * out_hw, write=c_out * out_hw)


def gru_cost(features: int, steps: int, hidden: int, directions: int) -> Cost:
    """GRU: per step and direction ``2·in·3h + 2·h·3h`` matmul FLOPs plus ``17h`` point-wise."""
    params = directions * (3 * hidden * features + 3 * hidden * hidden + 6 * hidden)
    per_step = 2 * features * 3 * hidden + 2 * hidden * 3 * hidden + GRU_POINTWISE_PER_HIDDEN * hidden
    return Cost(params=params, flops=directions * steps * per_step, write=directions * hidden * steps)


def _act_flops(layer: Layer, x: Shape) -> int:
    """A layer's activation on its input: 1 per element written (``act_channels(C)·H·W``), 0 without one."""
    return act_channels(x[0], layer.activation) * x[1] * x[2] if layer.activation else 0


def _blocks() -> ModuleType:
    """``epnas.build`` (the torch blocks), imported when the first module is built."""
    from epnas import build

    return build


# ---------------------------------------------------------------- value tables

TABLES: dict[str, str] = {
    "channels": "channels",
    "width": "widths",
    "pool": "pool_widths",
    "freq_width": "freq_widths",
    "stride_time": "strides_time",
    "stride_freq": "strides_freq",
    "dilation": "strides_freq",
    "activation": "activations",
    "directions": "directions",
    "keep": "keep_probs",
}
"""A layer value's slot → the ``LayerSpace`` table its values come from.  The slots are the
fields, except that a pooling op's ``width`` sits in ``pool`` where the space has pooling
widths (``slot``); a dilation rate takes its values from the frequency strides."""

CHOICES: dict[str, str] = {"dilation": "stride_freq"}
"""Slots without an insert-decoder choice of their own → the choice that picks them."""


def table(space: LayerSpace, slot_name: str) -> tuple:
    """The values of slot ``slot_name`` in ``space`` (``TABLES``); ``()`` where the space has none."""
    return getattr(space, TABLES[slot_name])


def slot(space: LayerSpace, op: str, name: str) -> str:
    """The slot of field ``name`` of ``op``: ``pool`` for a pooling op's width where ``space`` has
    pooling widths, else ``name``."""
    spec = LAYER_OPS.get(space.name, {}).get(op)
    return "pool" if name == "width" and spec is not None and spec.pooling and space.pool_widths else name


def field_values(space: LayerSpace, op: str, name: str) -> tuple:
    """The value table field ``name`` of ``op`` takes its values from: ``table(space, slot(...))``."""
    return table(space, slot(space, op, name))


def field_choice(space: LayerSpace, op: str, name: str) -> str:
    """The insert decoder's choice that picks field ``name`` of ``op``: its slot, or ``CHOICES[slot]``."""
    chosen = slot(space, op, name)
    return CHOICES.get(chosen, chosen)


def slot_value(space: LayerSpace, layer: Layer, slot_name: str) -> Any:
    """The value ``layer`` holds in slot ``slot_name`` (``None`` where its op keeps that field elsewhere)."""
    name = "width" if slot_name == "pool" else slot_name
    return getattr(layer, name) if slot(space, layer.op, name) == slot_name else None


# ---------------------------------------------------------------- layer ops


@dataclass(frozen=True)
class LayerOp:
    """One op of a layer space (module docstring: what each member means)."""

    name: str
    fields: tuple[str, ...]
    out_shape: Callable[[Layer, Shape], Shape]
    cost: Callable[[Layer, Shape], Cost]
    module: Callable[[Layer, Shape], nn.Module]
    pooling: bool = False


def _set(value: int | None) -> int:
    """A field the layer's op declares: ``arch.parse_arch`` has checked that it is set."""
    assert value is not None, "a validated layer sets every field its op declares"
    return value


def _square(layer: Layer) -> tuple[int, int]:
    return (_set(layer.width), _set(layer.width))


def _time_freq(layer: Layer) -> tuple[int, int]:
    return (_set(layer.width), _set(layer.freq_width))


def _strides(layer: Layer) -> tuple[int, int]:
    return (_set(layer.stride_time), _set(layer.stride_freq))


def _ones(layer: Layer) -> tuple[int, int]:
    return (1, 1)


def _twos(layer: Layer) -> tuple[int, int]:
    return (2, 2)


def _one(layer: Layer) -> int:
    return 1


def _strided(channels: Callable[[Layer, Shape], int], stride: Pair) -> Callable[[Layer, Shape], Shape]:
    """``(channels, ceil(H / s_h), ceil(W / s_w))``."""

    def out_shape(layer: Layer, x: Shape) -> Shape:
        s_h, s_w = stride(layer)
        return (channels(layer, x), same_out(x[1], s_h), same_out(x[2], s_w))

    return out_shape


def _conv(
    name: str,
    fields: tuple[str, ...],
    kernel: Pair,
    stride: Pair = _ones,
    dilation: Callable[[Layer], int] = _one,
    separable: bool = False,
) -> LayerOp:
    """activation → SAME conv (``separable``: depthwise + pointwise) → batch-norm, ``channels`` out."""
    out_shape = _strided(lambda layer, x: _set(layer.channels), stride)

    def cost(layer: Layer, x: Shape) -> Cost:
        out = out_shape(layer, x)
        kh, kw = kernel(layer)
        return conv_cost(x[0], out[0], kh, kw, out[1] * out[2], layer.activation, separable) + Cost(
            flops=_act_flops(layer, x)
        )

    def module(layer: Layer, x: Shape) -> nn.Module:
        return _blocks().ConvUnit(
            x[0], _set(layer.channels), kernel(layer), stride(layer), dilation(layer), layer.activation, separable
        )

    return LayerOp(name, fields, out_shape, cost, module)


def _pool(name: str, fields: tuple[str, ...], kernel: Pair, stride: Pair) -> LayerOp:
    """SAME max or average pooling: ``k_h·k_w`` FLOPs per element written."""
    out_shape = _strided(lambda layer, x: x[0], stride)

    def cost(layer: Layer, x: Shape) -> Cost:
        kh, kw = kernel(layer)
        out = numel(out_shape(layer, x))
        return Cost(flops=kh * kw * out, write=out)

    def module(layer: Layer, x: Shape) -> nn.Module:
        return _blocks().Pool(name, kernel(layer), stride(layer))

    return LayerOp(name, fields, out_shape, cost, module, pooling=True)


def _add() -> LayerOp:
    """The identity (a skip input, when set, is added by the merge)."""

    def module(layer: Layer, x: Shape) -> nn.Module:
        from torch import nn

        return nn.Identity()

    return LayerOp("add", (), out_shape=lambda layer, x: x, cost=lambda layer, x: Cost(write=numel(x)), module=module)


def _gru() -> LayerOp:
    """``(C, T, F)`` read as ``T`` steps of ``C·F`` features → ``(hidden·directions, T, 1)``."""
    return LayerOp(
        "gru",
        ("channels", "directions"),
        out_shape=lambda layer, x: (_set(layer.channels) * _set(layer.directions), x[1], 1),
        cost=lambda layer, x: gru_cost(
            features=x[0] * x[2], steps=x[1], hidden=_set(layer.channels), directions=_set(layer.directions)
        ),
        module=lambda layer, x: _blocks().GRU(x[0] * x[2], _set(layer.channels), _set(layer.directions)),
    )


def _fc() -> LayerOp:
    """activation → flatten → linear with bias to ``(units, 1, 1)``: ``C·H·W·units + units`` params."""

    def cost(layer: Layer, x: Shape) -> Cost:
        n_in, units = numel(x), _set(layer.channels)
        return Cost(params=n_in * units + units, flops=_act_flops(layer, x) + 2 * n_in * units + units, write=units)

    return LayerOp(
        "fc",
        ("channels", "activation"),
        out_shape=lambda layer, x: (_set(layer.channels), 1, 1),
        cost=cost,
        module=lambda layer, x: _blocks().FullyConnected(numel(x), _set(layer.channels), layer.activation),
    )


_IMAGE_CONV = ("channels", "width", "activation")
_KWS_CONV = ("channels", "width", "freq_width", "stride_time", "stride_freq", "activation")


def _by_name(*ops: LayerOp) -> dict[str, LayerOp]:
    return {op.name: op for op in ops}


LAYER_OPS: dict[str, dict[str, LayerOp]] = {
    # width × width kernels: convolutions at stride 1, pools (width from the pool widths) at stride 2
    "image-layer": _by_name(
        _conv("conv2d", _IMAGE_CONV, _square),
        _conv("dep-sep-conv2d", _IMAGE_CONV, _square, separable=True),
        _pool("maxpool", ("width",), _square, _twos),
        _pool("avgpool", ("width",), _square, _twos),
        _add(),
    ),
    # width (time) × freq_width kernels; avgpool's stride is its kernel
    "kws-layer": _by_name(
        _conv("conv2d", _KWS_CONV, _time_freq, _strides),
        _conv("dep-sep-conv2d", _KWS_CONV, _time_freq, _strides, separable=True),
        _conv(
            "dilated-conv2d",
            ("channels", "width", "freq_width", "dilation", "activation"),
            _time_freq,
            dilation=lambda layer: _set(layer.dilation),
        ),
        _gru(),
        _pool("avgpool", ("width", "freq_width"), _time_freq, _time_freq),
        _fc(),
    ),
}

OP_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    space: {name: op.fields for name, op in ops.items()} for space, ops in LAYER_OPS.items()
}
"""``OP_FIELDS[space][op]``: the fields ``op`` needs, in order (a view of ``LAYER_OPS``)."""


def layer_op(space: str, op: str) -> LayerOp:
    """The op ``op`` of layer space ``space``; ``SpecError`` for one the space does not have."""
    try:
        return LAYER_OPS[space][op]
    except KeyError:
        raise SpecError.one("op", f"unknown op {op!r}") from None


# ---------------------------------------------------------------- branch ops


@dataclass(frozen=True)
class BranchOp:
    """One op of a cell branch, stride 1 (module docstring: what each member means)."""

    name: str
    fields: tuple[str, ...]
    out_channels: Callable[[Branch, int], int]
    cost: Callable[[Branch, int, int], Cost]
    module: Callable[[Branch, int], nn.Module]


def _branch_conv_cost(branch: Branch, c_in: int, hw: int) -> Cost:
    conv = conv_cost(c_in, branch.channels, branch.width, branch.width, hw, branch.activation)
    return conv + Cost(flops=act_channels(c_in, branch.activation) * hw, read=c_in * hw)


def _conv1x7_cost(branch: Branch, c_in: int, hw: int) -> Cost:
    """activation → 1×7 conv → 7×1 conv → batch-norm."""
    c_act, c = act_channels(c_in, branch.activation), branch.channels
    params = c_act * 7 * c + c * 7 * c + 2 * c
    flops = c_act * hw + 2 * c_act * 7 * c * hw + 2 * c * 7 * c * hw + c * hw
    return Cost(params=params, flops=flops, read=c_in * hw, write=c * hw)


def _branch_pool(name: str) -> BranchOp:
    """``pool × pool`` SAME pooling at stride 1: keeps the channels, ``pool²`` FLOPs per element."""
    return BranchOp(
        name,
        ("pool",),
        out_channels=lambda branch, c_in: c_in,
        cost=lambda branch, c_in, hw: Cost(flops=branch.pool**2 * c_in * hw, read=c_in * hw, write=c_in * hw),
        module=lambda branch, c_in: _blocks().Pool(name, (branch.pool, branch.pool), (1, 1)),
    )


BRANCH_OPS: dict[str, BranchOp] = {
    "conv": BranchOp(
        "conv",
        ("channels", "width", "activation"),
        out_channels=lambda branch, c_in: branch.channels,
        cost=_branch_conv_cost,
        module=lambda branch, c_in: _blocks().ConvUnit(
            c_in, branch.channels, (branch.width, branch.width), activation=branch.activation
        ),
    ),
    "maxpool": _branch_pool("maxpool"),
    "avgpool": _branch_pool("avgpool"),
    "1x7-7x1": BranchOp(
        "1x7-7x1",
        ("channels", "activation"),
        out_channels=lambda branch, c_in: branch.channels,
        cost=_conv1x7_cost,
        module=lambda branch, c_in: _blocks().Conv1x7(c_in, branch.channels, branch.activation),
    ),
}


def branch_op(op: str) -> BranchOp:
    """The branch op ``op``; ``SpecError`` for one no branch type uses."""
    try:
        return BRANCH_OPS[op]
    except KeyError:
        raise SpecError.one("type", f"unknown branch op {op!r}") from None
