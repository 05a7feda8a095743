"""Morphing actions by hand: scale steps and clamps, insert rewiring, the L+5 rule, degradation."""

from __future__ import annotations

import pytest

from epnas.arch import parse_arch
from epnas.morph import Action, apply_action, insert_fields, max_positions, scale
from epnas.space import IMAGE_LAYER, IMAGE_MODULE, KWS_LAYER, step_along

KEEP4 = (1, 1, 1, 1)
CONV = {"op": "conv2d", "channels": 32, "width": 3, "activation": "relu"}


def chain(n: int) -> object:
    return parse_arch({"space": "image-layer", "layers": [{**CONV, "src1": i} for i in range(n)]})


def insert_choice(op: str = "conv2d", channels: int = 64, width: int = 5, merge: str = "add") -> dict:
    return {
        "op": IMAGE_LAYER.ops.index(op),
        "channels": IMAGE_LAYER.channels.index(channels),
        "activation": 0,
        "width": IMAGE_LAYER.widths.index(width),
        "merge": ("add", "concat").index(merge),
        "pool": 0,
    }


@pytest.mark.parametrize(
    "values, current, direction, expected",
    [
        ((16, 32, 64), 32, +1, 64),
        ((16, 32, 64), 64, +1, 64),
        ((16, 32, 64), 16, -1, 16),
        ((16, 32, 64), 32, 0, 32),
        ((16, 32, 64), 40, -1, 16),
    ],
)
def test_step_along_clamps(values, current, direction, expected) -> None:
    assert step_along(values, current, direction) == expected


def test_scale_acts_per_group_of_contiguous_layers() -> None:
    arch = chain(8)  # groups of two layers each
    scaled = scale(arch, channel=(0, 1, 2, 1), width=(1, 0, 1, 2))
    assert [layer.channels for layer in scaled.layers] == [64, 64, 32, 32, 16, 16, 32, 32]
    assert [layer.width for layer in scaled.layers] == [3, 3, 5, 5, 3, 3, 1, 1]


def test_insert_in_the_middle_rewires_the_chain_and_shifts_skips() -> None:
    arch = parse_arch(
        {"space": "image-layer", "layers": [{**CONV, "src1": 0}, {**CONV, "src1": 1}, {**CONV, "src1": 2, "src2": 1}]}
    )
    result = apply_action(
        arch, Action(KEEP4, KEEP4, kind=0, position=1, src2=0, insert=insert_choice(channels=64, merge="concat"))
    )
    layers = result.arch.layers
    assert result.applied == "insert" and len(layers) == 4
    assert (layers[1].src1, layers[1].src2, layers[1].channels, layers[1].merge) == (1, 0, 64, "concat")
    assert layers[2].src1 == 2  # the old layer 1 now reads the inserted layer
    assert (layers[3].src1, layers[3].src2) == (3, 1)  # main input shifts; the skip from t[1] still reads t[1]


@pytest.mark.parametrize("position", [3, 4, 7])
def test_positions_past_the_end_append(position: int) -> None:
    """L+5 rule: Src1 has L+5 values; any position >= L appends at the end."""
    arch = chain(3)
    layers = apply_action(
        arch, Action(KEEP4, KEEP4, kind=0, position=position, src2=position, insert=insert_choice(op="maxpool"))
    ).arch.layers
    assert len(layers) == 4 and layers[3].op == "maxpool" and layers[3].src1 == 3 and layers[3].src2 is None


def test_src2_equal_to_the_position_means_no_skip() -> None:
    layers = apply_action(
        chain(3), Action(KEEP4, KEEP4, kind=0, position=2, src2=2, insert=insert_choice())
    ).arch.layers
    assert layers[2].src2 is None


def test_remove_rewires_readers_to_the_removed_layers_input() -> None:
    arch = parse_arch(
        {
            "space": "image-layer",
            "layers": [
                {**CONV, "src1": 0},
                {**CONV, "src1": 1},
                {**CONV, "src1": 2, "src2": 2},
                {**CONV, "src1": 3, "src2": 1},
            ],
        }
    )
    layers = apply_action(arch, Action(KEEP4, KEEP4, kind=2, position=1)).arch.layers
    assert [(layer.src1, layer.src2) for layer in layers] == [(0, None), (1, 1), (2, 1)]


@pytest.mark.parametrize(
    "arch, action, reason",
    [
        (chain(1), Action(KEEP4, KEEP4, kind=2, position=0), "only one layer"),
        (chain(32), Action(KEEP4, KEEP4, kind=0, position=0, insert=insert_choice()), "already has 32 layers"),
    ],
)
def test_impossible_actions_degrade_to_keep_visibly(arch, action, reason: str) -> None:
    result = apply_action(arch, action)
    assert result.applied == "keep" and reason in result.degraded and result.arch == arch


def test_cell_insert_cuts_the_branch_it_reads_and_remove_degrades_on_one_branch() -> None:
    cell = parse_arch(
        {
            "space": "image-module",
            "cell": {"branches": [{"type": "conv-none", "src1": 0, "channels": 8, "width": 3, "propagate": True}]},
        }
    )
    choice = {
        "op": IMAGE_MODULE.branch_types.index("conv-maxpool"),
        "channels": 1,
        "activation": 0,
        "width": 2,
        "pool": 1,
        "propagate": 1,
    }
    grown = apply_action(cell, Action(KEEP4, KEEP4, kind=0, position=9, src2=0, insert=choice)).arch
    first, second = grown.cell.branches
    assert not first.propagate and second.propagate
    assert (second.type, second.src1, second.src2, second.channels, second.width, second.pool) == (
        "conv-maxpool",
        1,
        0,
        12,
        5,
        3,
    )
    assert apply_action(cell, Action(KEEP4, KEEP4, kind=2, position=0)).degraded


def test_kws_insert_fields_and_positions() -> None:
    names = [name for name, _ in insert_fields(KWS_LAYER)]
    assert names == [
        "op",
        "channels",
        "activation",
        "width",
        "merge",
        "freq_width",
        "stride_time",
        "stride_freq",
        "directions",
    ]
    assert max_positions(IMAGE_LAYER) == 37 and max_positions(IMAGE_MODULE) == 6
