"""Property tests over the whole action space (issue 2 acceptance).

2,000 random 20-step action sequences per space, from random starts: every
intermediate architecture validates and round-trips through JSON unchanged; the
final one builds, runs forward on the space's input shape with the inferred output
shape, and its analytic parameter count equals the built model's exactly.

The forward pass computes on real CPU tensors when the architecture costs at most
``REAL_FLOPS`` (by its analytic metrics); costlier ones (a KWS network of 20 layers
of 256-channel 20×10 convolutions is tens of GFLOPs) run the same modules on the meta
device, where every op still checks its input shapes and infers its output shape.
The test asserts that most sequences took the real path.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epnas.arch import Arch, output_shape, parse_arch
from epnas.build import build_model
from epnas.metrics import compute_metrics
from epnas.morph import apply_action
from epnas.space import SPACES

from .strategies import actions, starts

CLASSES = 10
SEQUENCES = 2000
STEPS = 20
REAL_FLOPS = 200_000_000


def _body_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    captured: dict[str, torch.Tensor] = {}

    def keep_input(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured["body"] = inputs[0]

    handle = model.head.register_forward_hook(keep_input)
    logits = model(x)
    handle.remove()
    assert logits.shape == (x.shape[0], CLASSES)
    return captured["body"]


@pytest.mark.parametrize("space_name", list(SPACES))
def test_random_action_sequences_stay_valid_and_buildable(space_name: str) -> None:
    torch.set_num_threads(1)
    shape = SPACES[space_name].input_shape

    @settings(max_examples=SEQUENCES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(start=starts(space_name), sequence=st.lists(actions(space_name), min_size=STEPS, max_size=STEPS))
    def check(start: Arch, sequence: list) -> None:
        arch = start
        for action in sequence:
            arch = apply_action(arch, action).arch
            assert parse_arch(arch.to_json()) == arch
            assert parse_arch(arch.to_json()).to_json() == arch.to_json()
        metrics = compute_metrics(arch, shape, CLASSES)
        device = "cpu" if metrics.flops <= REAL_FLOPS else "meta"
        paths[device] += 1
        # Built on the meta device, then materialised uninitialised: a KWS fc layer of 10^8
        # parameters is not initialised 2,000 times.
        with torch.device("meta"):
            model = build_model(arch, shape, CLASSES)
        if device == "cpu":
            model = model.to_empty(device="cpu")
        with torch.no_grad():
            body = _body_output(model.eval(), torch.randn(1, *shape, device=device))
        assert tuple(body.shape[1:]) == output_shape(arch, shape)
        assert metrics.params == sum(p.numel() for p in model.parameters())

    paths = {"cpu": 0, "meta": 0}
    check()
    assert paths["cpu"] >= 0.6 * SEQUENCES, paths
