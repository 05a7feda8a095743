"""The installation's default parallelism (--default-parallelism, chart value `parallelism`):
used for a search without spec.parallelism, never over a search's own value, live edits kept."""

from __future__ import annotations

import pytest

from controller.main import parse_args
from controller.metrics import ControllerMetrics
from controller.runner import SearchRunner


def obj(parallelism=None) -> dict:
    spec = {"budget": {"episodes": 1, "branches": 64}}
    if parallelism is not None:
        spec["parallelism"] = parallelism
    return {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ArchitectureSearch",
        "metadata": {"name": "s", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("own", "default", "expected"), [(None, None, None), (None, 8, 8), (3, 8, 3), (16, 8, 16), (3, None, 3)]
)
def test_a_searchs_own_parallelism_wins_over_the_installations(own, default, expected) -> None:
    runner = SearchRunner(obj(own), kube=None, metrics=ControllerMetrics(), default_parallelism=default)  # type: ignore[arg-type]

    assert runner.step_parallelism() == expected


def test_a_live_edit_of_spec_parallelism_replaces_the_default_and_removing_it_brings_it_back() -> None:
    runner = SearchRunner(obj(), kube=None, metrics=ControllerMetrics(), default_parallelism=8)  # type: ignore[arg-type]
    runner.parallelism = 2  # what observe() sets from an edited spec.parallelism
    assert runner.step_parallelism() == 2
    runner.parallelism = None
    assert runner.step_parallelism() == 8


def test_the_flag_takes_a_positive_integer(capsys) -> None:
    assert parse_args(["--default-parallelism", "16"]).default_parallelism == 16
    assert parse_args([]).default_parallelism is None
    for bad in ("0", "-1", "many"):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--default-parallelism", bad])
        assert exit_.value.code == 2 and "--default-parallelism" in capsys.readouterr().err
