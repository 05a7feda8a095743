"""The op registry (``epnas.ops``): every registered op runs forward and backward, every
parameter gets a gradient, and the op's declared shape and cost agree with its module."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from epnas.arch import Branch, random_layer
from epnas.ops import BRANCH_OPS, LAYER_OPS, OP_FIELDS, field_values, numel
from epnas.space import SPACES, LayerSpace

SEEDS = range(3)
BATCH = 2
# small inputs keep a 256-channel op cheap; big enough for every KWS kernel and stride
LAYER_INPUTS = {"image-layer": (3, 9, 9), "kws-layer": (2, 21, 11)}
CELL_INPUT = (5, 7, 7)


def run_and_check(
    module: nn.Module, x_shape: tuple[int, int, int], out_shape: tuple[int, int, int], params: int
) -> None:
    """Forward a random batch, backward a random projection of the output; assert shape, gradients, count."""
    x = torch.randn(BATCH, *x_shape, requires_grad=True)
    out = module(x)
    assert tuple(out.shape) == (BATCH, *out_shape)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and bool(x.grad.isfinite().all())
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert bool(param.grad.isfinite().all()) and bool(param.grad.abs().sum() > 0), f"{name}: {param.grad}"
    assert params == sum(p.numel() for p in module.parameters())


def layer_cases() -> list[tuple[str, str, int]]:
    return [(space, op, seed) for space, ops in LAYER_OPS.items() for op in ops for seed in SEEDS]


@pytest.mark.parametrize("space_name, op, seed", layer_cases())
def test_layer_op_runs_and_agrees_with_its_module(space_name: str, op: str, seed: int) -> None:
    """A random layer of ``op`` from the space's tables, with every activation where it has one."""
    space = SPACES[space_name]
    drawn = random_layer(space, 0, random.Random(seed), op=op)
    spec = LAYER_OPS[space_name][op]
    activations = space.activations if "activation" in spec.fields else (None,)
    x = LAYER_INPUTS[space_name]
    torch.manual_seed(seed)
    for activation in activations:
        layer = drawn.model_copy(update={"activation": activation})
        run_and_check(spec.module(layer, x), x, spec.out_shape(layer, x), spec.cost(layer, x).params)
        assert spec.cost(layer, x).write == numel(spec.out_shape(layer, x))


@pytest.mark.parametrize("op", list(BRANCH_OPS))
@pytest.mark.parametrize("activation", ["relu", "crelu"])
def test_branch_op_runs_and_agrees_with_its_module(op: str, activation: str) -> None:
    space = SPACES["image-module"]
    branch = Branch(type=f"{op}-none", src1=0, channels=space.channels[1], width=3, pool=3, activation=activation)
    spec = BRANCH_OPS[op]
    c_in, h, w = CELL_INPUT
    torch.manual_seed(0)
    module = spec.module(branch, c_in)
    run_and_check(module, CELL_INPUT, (spec.out_channels(branch, c_in), h, w), spec.cost(branch, c_in, h * w).params)


def test_registry_covers_the_spaces() -> None:
    """Every op of every space is registered, in the space's order, with fields the space has tables for."""
    for name, space in SPACES.items():
        if isinstance(space, LayerSpace):
            assert tuple(LAYER_OPS[name]) == space.ops
            for op, fields in OP_FIELDS[name].items():
                assert all(field_values(space, op, field) for field in fields), (name, op)
        else:
            ops = {part for t in space.branch_types for part in t.rpartition("-")[::2]} - {"none"}
            assert ops == set(BRANCH_OPS)
