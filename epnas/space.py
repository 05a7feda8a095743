"""The three search spaces of the papers, as data.

Value tables are copied from EPNAS Table 2 (``image-layer``), EPNAS Table 3
(``image-module``) and the supplement's Table 1 / RENA Appendix C (``kws-layer``).
Ordered tuples are the lists the scale action steps along: one step up or down,
clamped at the ends.  Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

SpaceName = Literal["image-layer", "image-module", "kws-layer"]

ACTIVATIONS: tuple[str, ...] = ("relu", "crelu", "elu", "selu", "swish")


@dataclass(frozen=True)
class LayerSpace:
    """A layer-by-layer space: every insert adds one layer from ``ops``.

    ``widths`` are square filter widths (image) or kernel sizes in time (KWS);
    ``freq_widths`` the KWS kernel sizes in frequency; ``strides_time`` /
    ``strides_freq`` the KWS strides (``strides_freq`` doubles as the dilation
    rate of ``dilated-conv2d``); ``pool_widths`` the image pooling widths;
    ``keep_probs`` the table a layer's dropout ``keep`` (a user's, never sampled) is
    embedded against.  What each op needs and computes is declared in ``epnas.ops``.
    """

    name: SpaceName
    ops: tuple[str, ...]
    channels: tuple[int, ...]
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    input_shape: tuple[int, int, int]
    max_layers: int = 32
    pool_widths: tuple[int, ...] = ()
    freq_widths: tuple[int, ...] = ()
    strides_time: tuple[int, ...] = ()
    strides_freq: tuple[int, ...] = ()
    directions: tuple[int, ...] = ()
    keep_probs: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModuleSpace:
    """A module (cell) space: every insert adds one branch of two ops.

    Branch type ``a-b``: op ``a`` reads Src1, op ``b`` reads Src2, and their
    outputs are concatenated; ``none`` means the branch has one op.
    """

    name: SpaceName
    branch_types: tuple[str, ...]
    channels: tuple[int, ...]
    widths: tuple[int, ...]
    pool_widths: tuple[int, ...]
    activations: tuple[str, ...]
    input_shape: tuple[int, int, int]
    max_branches: int = 5
    propagate: tuple[int, ...] = (0, 1)


IMAGE_LAYER = LayerSpace(
    name="image-layer",
    ops=("conv2d", "dep-sep-conv2d", "maxpool", "avgpool", "add"),
    widths=(1, 3, 5, 7),
    pool_widths=(2, 3),
    channels=(16, 32, 64, 96, 128, 256),
    activations=ACTIVATIONS,
    input_shape=(3, 32, 32),
)

IMAGE_MODULE = ModuleSpace(
    name="image-module",
    branch_types=(
        "conv-conv",
        "conv-maxpool",
        "conv-avgpool",
        "conv-none",
        "maxpool-none",
        "avgpool-none",
        "1x7-7x1-none",
    ),
    widths=(1, 3, 5, 7),
    pool_widths=(2, 3),
    channels=(8, 12, 16, 24, 32),
    activations=ACTIVATIONS,
    input_shape=(3, 32, 32),
)

KWS_LAYER = LayerSpace(
    name="kws-layer",
    ops=("conv2d", "dep-sep-conv2d", "dilated-conv2d", "gru", "avgpool", "fc"),
    widths=(1, 4, 8, 16, 20),
    freq_widths=(1, 2, 4, 8, 10),
    channels=(4, 12, 16, 32, 64, 128, 192, 256),
    strides_time=(1, 2, 4, 8, 10),
    strides_freq=(1, 2, 3, 4, 5),
    directions=(1, 2),
    keep_probs=(0.8, 0.9, 1.0),
    activations=("relu",),
    input_shape=(1, 49, 40),
)

SPACES: dict[str, LayerSpace | ModuleSpace] = {s.name: s for s in (IMAGE_LAYER, IMAGE_MODULE, KWS_LAYER)}


def get_space(name: str) -> LayerSpace | ModuleSpace:
    """The space called ``name``; ``KeyError`` never escapes: unknown names raise ``SpecError``."""
    from epnas.errors import SpecError

    try:
        return SPACES[name]
    except KeyError:
        raise SpecError.one("searchSpace", f"unknown search space {name!r}; one of {', '.join(SPACES)}") from None


def step_along(values: tuple, current, direction: int):
    """One step of ``direction`` (-1, 0, +1) along the ordered ``values``, clamped at the ends.

    A current value that is not in the table snaps to the nearest entry first
    (a user may start from an architecture off the table).
    """
    if not values:
        return current
    index = nearest_index(values, current)
    return values[max(0, min(len(values) - 1, index + direction))]


def nearest_index(values: Sequence[Any], current: Any) -> int:
    """Index of the entry of ``values`` nearest to ``current`` (ties: the lower index)."""
    return min(range(len(values)), key=lambda i: abs(values[i] - current))
