"""Every shipped example is a valid search file, and the embedded default starts infeasible."""

from __future__ import annotations

import pathlib
import random

import pytest
import torch

from epnas.arch import random_arch
from epnas.build import build_model
from epnas.metrics import compute_metrics
from epnas.reward import compute_reward
from epnas.spec import dataset_geometry, initial_arch, load_search

EXAMPLES = sorted((pathlib.Path(__file__).parents[3] / "examples").glob("*.yaml"))


def test_there_are_examples_for_every_space() -> None:
    spaces = {load_search(p.read_text()).spec.search_space for p in EXAMPLES}
    assert spaces == {"image-layer", "image-module", "kws-layer"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates(path: pathlib.Path) -> None:
    search = load_search(path.read_text(), source=str(path))
    assert search.name == path.stem
    start = initial_arch(search.spec) or random_arch(
        search.spec.search_space, search.spec.initial_architecture.random.depth, random.Random(search.spec.seed)
    )
    shape, classes = dataset_geometry(search.spec)
    model = build_model(
        start, shape, classes
    ).eval()  # the starting network builds, reads the data's shape, writes one logit per class
    assert compute_metrics(start, shape, classes).params == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert model(torch.zeros(2, *shape)).shape == (2, classes)


def test_the_demo_starts_from_a_network_that_violates_both_constraints() -> None:
    spec = load_search((EXAMPLES[0].parent / "digits-quick.yaml").read_text()).spec
    start = random_arch(spec.search_space, spec.initial_architecture.random.depth, random.Random(spec.seed))
    reward = compute_reward(0.9, compute_metrics(start, *dataset_geometry(spec)), spec.constraints)
    assert not reward.feasible
    assert reward.violations["modelSize"] > 0 and reward.violations["computeIntensity"] > 0
