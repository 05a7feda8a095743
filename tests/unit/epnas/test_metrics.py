"""Resource metrics against the built model (issue 2 acceptance).

FLOPs are checked against an independent count: ``FlopCounterMode`` for every
matmul and convolution, plus forward hooks that count the point-wise ops on the
tensors that really flow through the model.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from epnas.arch import Arch, Layer, parse_arch, random_arch
from epnas.build import GRU, Activation, Head, Merge, Pool, build_model
from epnas.metrics import compute_metrics
from epnas.morph import apply_action, random_action
from epnas.ops import GRU_POINTWISE_PER_HIDDEN
from epnas.space import SPACES

CLASSES = 10
ARCHS_PER_SPACE = 200


def pointwise_hooks(model: nn.Module, counter: list[int]) -> list:
    """Forward hooks adding each module's point-wise FLOPs, from the real tensors, to ``counter``."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, (Activation, nn.BatchNorm2d)):
            counter[0] += output.numel()
        elif isinstance(module, nn.Linear):
            counter[0] += output.numel()  # bias; the product is FlopCounterMode's
        elif isinstance(module, Pool):
            counter[0] += module.kernel[0] * module.kernel[1] * output.numel()
        elif isinstance(module, Head):
            counter[0] += inputs[0].numel()  # global average pooling
        elif isinstance(module, GRU):
            steps = inputs[0].shape[2]
            counter[0] += GRU_POINTWISE_PER_HIDDEN * module.hidden * steps * module.directions
        elif isinstance(module, Merge) and inputs[1] is not None:
            a, b = inputs
            if b.shape[-2:] != a.shape[-2:]:
                counter[0] += max(b.numel(), b.shape[1] * a.shape[2] * a.shape[3])
            if module.mode == "add":
                counter[0] += output.numel()

    return [m.register_forward_hook(hook) for m in model.modules()]


def independent_flops(arch: Arch, shape: tuple[int, int, int]) -> int:
    with torch.device("meta"):
        model = build_model(arch, shape, CLASSES)
    model = model.to_empty(device="cpu").eval()
    pointwise = [0]
    handles = pointwise_hooks(model, pointwise)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *shape))
    for handle in handles:
        handle.remove()
    return counter.get_total_flops() + pointwise[0]


def sample_archs(space_name: str, count: int, seed: int) -> list[Arch]:
    rng = random.Random(seed)
    archs = []
    while len(archs) < count:
        arch = random_arch(space_name, rng.randint(1, 6), rng)
        for _ in range(rng.randint(0, 8)):
            arch = apply_action(arch, random_action(arch, rng)).arch
        archs.append(arch)
    return archs


@pytest.mark.parametrize("space_name", list(SPACES))
def test_flops_agree_with_independent_count(space_name: str) -> None:
    torch.set_num_threads(1)
    shape = SPACES[space_name].input_shape
    for arch in sample_archs(space_name, ARCHS_PER_SPACE, seed=7):
        analytic = compute_metrics(arch, shape, CLASSES).flops
        counted = independent_flops(arch, shape)
        assert analytic == counted, arch.to_json()  # exactly: docs/benchmarks.md says so


def test_conv_layer_by_hand() -> None:
    """3×8×8 input, relu → 3×3 conv to 16 → BN, then the head (GAP → 10 classes)."""
    arch = parse_arch(
        {
            "space": "image-layer",
            "layers": [{"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"}],
        }
    )
    m = compute_metrics(arch, (3, 8, 8), 10)
    conv_params, bn_params, head_params = 3 * 9 * 16, 2 * 16, 16 * 10 + 10
    assert m.params == conv_params + bn_params + head_params
    assert m.size_bytes == 4 * m.params
    relu, conv, bn = 3 * 64, 2 * 3 * 9 * 16 * 64, 16 * 64
    gap, fc = 16 * 64, 2 * 16 * 10 + 10
    assert m.flops == relu + conv + bn + gap + fc
    moved = 4 * ((conv_params + bn_params + 3 * 64 + 16 * 64) + (head_params + 16 * 64 + 10))
    assert m.bytes_moved == moved
    assert m.compute_intensity == pytest.approx(m.flops / moved)


def test_gru_by_hand() -> None:
    """1×49×40 → GRU(64, one direction): 3 gates of (40 → 64) and (64 → 64) over 49 steps."""
    arch = parse_arch({"space": "kws-layer", "layers": [{"op": "gru", "src1": 0, "channels": 64, "directions": 1}]})
    m = compute_metrics(arch, (1, 49, 40), 12)
    gru_params = 3 * 64 * 40 + 3 * 64 * 64 + 6 * 64
    assert m.params == gru_params + 64 * 12 + 12
    per_step = 2 * 40 * 192 + 2 * 64 * 192 + 17 * 64
    assert m.flops == 49 * per_step + 64 * 49 + 2 * 64 * 12 + 12


def test_crelu_doubles_the_channels_a_conv_reads() -> None:
    relu = parse_arch(
        {
            "space": "image-layer",
            "layers": [{"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"}],
        }
    )
    crelu = parse_arch(
        {
            "space": "image-layer",
            "layers": [{"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "crelu"}],
        }
    )
    shape = (4, 8, 8)
    assert compute_metrics(crelu, shape, 10).params - compute_metrics(relu, shape, 10).params == 4 * 9 * 16


def test_metrics_of_a_30_layer_network(benchmark) -> None:
    """Reported by pytest-benchmark (target < 5 ms); ``make bench`` records it."""
    rng = random.Random(3)
    layers = [
        Layer(
            op="conv2d",
            src1=i,
            channels=rng.choice((16, 32, 64)),
            width=3,
            activation="relu",
            src2=max(0, i - 2) if i % 3 == 0 else None,
        )
        for i in range(30)
    ]
    arch = parse_arch(Arch(space="image-layer", layers=tuple(layers)))
    metrics = benchmark(compute_metrics, arch, (3, 32, 32), 10)
    assert metrics.params == sum(p.numel() for p in build_model(arch, (3, 32, 32), 10).parameters())
