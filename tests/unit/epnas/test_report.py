"""The report's pure parts: the Pareto front and the network diagram's boxes, by hand."""

from __future__ import annotations

from epnas.report import arch_boxes, pareto_front


def test_pareto_front_keeps_the_points_nothing_beats() -> None:
    points = [(100, 0.5), (200, 0.7), (150, 0.4), (300, 0.7), (50, 0.2), (400, 0.9)]
    assert pareto_front(points) == [(50, 0.2), (100, 0.5), (200, 0.7), (400, 0.9)]
    # a floor (computeIntensity ≥ min): more is cheaper to satisfy, so higher cost wins ties the other way
    assert pareto_front([(5, 0.5), (10, 0.4), (20, 0.3), (8, 0.6)], lower_is_better=False) == [
        (8, 0.6),
        (10, 0.4),
        (20, 0.3),
    ]
    assert pareto_front([]) == []


def test_arch_boxes_name_each_layer_and_its_skips() -> None:
    labels, skips = arch_boxes(
        {
            "space": "image-layer",
            "layers": [
                {"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"},
                {"op": "maxpool", "src1": 1, "width": 2},
                {"op": "add", "src1": 2, "src2": 0, "merge": "add"},
            ],
        }
    )
    assert labels == ["input", "conv2d\nchannels 16\nwidth 3\nrelu", "maxpool\nwidth 2", "add\nadd ← 0"]
    assert skips == [(0, 3)]
