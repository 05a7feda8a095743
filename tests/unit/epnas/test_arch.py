"""Architectures: grammar, JSON, hash, shapes, and one clear error per bad input."""

from __future__ import annotations

import random

import pytest

from epnas.arch import output_shape, parse_arch, random_arch, trace_layers, with_channel_factor
from epnas.errors import SpecError
from epnas.space import SPACES

CONV = {"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"}


def layers(*items: dict) -> dict:
    return {"space": "image-layer", "layers": list(items)}


@pytest.mark.parametrize(
    "name, data, path, words",
    [
        ("unknown op", layers({**CONV, "op": "conv9d"}), "layers[0].op", "unknown op 'conv9d'"),
        ("src1 out of range", layers(CONV, {**CONV, "src1": 5}), "layers[1].src1", "5 out of range 0..1"),
        ("src2 out of range", layers(CONV, {**CONV, "src1": 1, "src2": 2}), "layers[1].src2", "out of range"),
        (
            "missing field",
            layers({"op": "conv2d", "src1": 0, "width": 3, "activation": "relu"}),
            "layers[0].channels",
            "required for op conv2d",
        ),
        ("negative channels", layers({**CONV, "channels": -4}), "layers[0].channels", "must be positive"),
        ("unknown activation", layers({**CONV, "activation": "gelu"}), "layers[0].activation", "unknown activation"),
        ("missing src1", layers({"op": "add"}), "layers[0].src1", "Field required"),
        ("wrong type", layers({**CONV, "channels": "many"}), "layers[0].channels", "integer"),
        ("unknown key", layers({**CONV, "kernel": 3}), "layers[0].kernel", "Extra inputs"),
        ("no layers", {"space": "image-layer", "layers": []}, "layers", "needs 1 to 32 layers"),
        ("unknown space", {"space": "audio", "layers": [CONV]}, "space", "unknown search space"),
        ("cell in a layer space", {"space": "image-layer", "cell": {"branches": []}}, "layers", "needs 'layers'"),
        (
            "unknown branch",
            {
                "space": "image-module",
                "cell": {"branches": [{"type": "conv-gru", "src1": 0, "channels": 8, "width": 3}]},
            },
            "cell.branches[0].type",
            "unknown branch type",
        ),
        (
            "branch without src2",
            {
                "space": "image-module",
                "cell": {"branches": [{"type": "conv-conv", "src1": 0, "channels": 8, "width": 3}]},
            },
            "cell.branches[0].src2",
            "required",
        ),
        (
            "gru directions",
            {"space": "kws-layer", "layers": [{"op": "gru", "src1": 0, "channels": 8, "directions": 3}]},
            "layers[0].directions",
            "1 or 2",
        ),
        ("not json", "{layers: ", "arch", "not valid JSON"),
    ],
)
def test_bad_architectures_raise_one_spec_error_naming_the_field(name: str, data, path: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_arch(data)
    assert any(p.path == path and words in p.message for p in caught.value.problems), caught.value.problems
    assert path in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        parse_arch(layers({**CONV, "op": "conv9d"}, {**CONV, "src1": 7, "channels": 0}))
    paths = {p.path for p in caught.value.problems}
    assert {"layers[0].op", "layers[1].src1", "layers[1].channels"} <= paths


@pytest.mark.parametrize("space_name", list(SPACES))
def test_json_round_trip_and_hash_are_stable(space_name: str) -> None:
    rng = random.Random(11)
    for _ in range(50):
        arch = random_arch(space_name, rng.randint(1, 8), rng)
        again = parse_arch(arch.to_json())
        assert again == arch and again.to_json() == arch.to_json() and again.hash == arch.hash
    assert len({random_arch(space_name, 4, random.Random(s)).hash for s in range(20)}) > 15


def test_shapes_by_hand() -> None:
    """conv keeps 32×32; a pool halves it (SAME, ceil); a concat skip adds channels."""
    arch = parse_arch(
        layers(
            CONV,
            {"op": "maxpool", "src1": 1, "width": 3},
            {"op": "conv2d", "src1": 2, "src2": 1, "merge": "concat", "channels": 32, "width": 5, "activation": "relu"},
            {"op": "add", "src1": 3, "src2": 0},
        )
    )
    nodes = trace_layers(arch, (3, 32, 32))
    assert [n.out for n in nodes] == [(16, 32, 32), (16, 16, 16), (32, 16, 16), (32, 16, 16)]
    assert nodes[2].merged == (32, 16, 16)  # 16 + 16 resampled to 16×16
    assert nodes[3].merged == (32, 16, 16)  # add zero-pads 3 → 32 channels
    assert output_shape(parse_arch(layers({"op": "maxpool", "src1": 0, "width": 2})), (1, 5, 5)) == (1, 3, 3)


def test_kws_conv_gru_fc_shapes() -> None:
    arch = parse_arch(
        {
            "space": "kws-layer",
            "layers": [
                {
                    "op": "conv2d",
                    "src1": 0,
                    "channels": 12,
                    "width": 4,
                    "freq_width": 10,
                    "stride_time": 2,
                    "stride_freq": 4,
                    "activation": "relu",
                },
                {"op": "gru", "src1": 1, "channels": 32, "directions": 2},
                {"op": "fc", "src1": 2, "channels": 16, "activation": "relu"},
            ],
        }
    )
    assert [n.out for n in trace_layers(arch, (1, 49, 40))] == [(12, 25, 10), (64, 25, 1), (16, 1, 1)]


def test_channel_factor_scales_every_channel_count() -> None:
    arch = parse_arch(layers(CONV, {**CONV, "src1": 1, "channels": 64}))
    assert [layer.channels for layer in with_channel_factor(arch, 0.5).layers] == [8, 32]
