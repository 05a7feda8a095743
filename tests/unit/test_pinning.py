"""The rule for pinning a search's spec: extensions continue, anything else is refused by field."""

from __future__ import annotations

import pytest

from epnas.pinning import differing_fields, spec_changes


def doc(**spec) -> dict:
    base = {
        "seed": 1,
        "budget": {"episodes": 3, "branches": 4},
        "constraints": [{"metric": "flops", "max": 100}],
        "parallelism": None,
    }
    for key, value in spec.items():
        if key == "budget":
            base["budget"] = {**base["budget"], **value}
        else:
            base[key] = value
    return {"metadata": {"name": "s", "labels": {}}, "spec": base}


@pytest.mark.parametrize(
    "name, new, extensions, refused",
    [
        ("same", doc(), [], []),
        ("more episodes", doc(budget={"episodes": 5}), ["spec.budget.episodes"], []),
        ("fewer episodes", doc(budget={"episodes": 2}), [], ["spec.budget.episodes (cannot shrink from 3 to 2)"]),
        (
            "a children budget and parallelism",
            doc(budget={"maxChildren": 40}, parallelism=2),
            ["spec.budget.maxChildren", "spec.parallelism"],
            [],
        ),
        (
            "seed and a constraint bound",
            doc(seed=2, constraints=[{"metric": "flops", "max": 200}]),
            [],
            ["spec.constraints[0].max", "spec.seed"],
        ),
        (
            "more branches with more episodes",
            doc(budget={"episodes": 4, "branches": 8}),
            ["spec.budget.episodes"],
            ["spec.budget.branches"],
        ),
        (
            "final training added after the search",
            doc(finalTraining={"top": 2, "epochs": 30}),
            ["spec.finalTraining"],
            [],
        ),
        (
            "the trainer image and placement: where children run, not what they compute",
            doc(trainer={"image": "t:2", "priorityClassName": "gpu"}),
            ["spec.trainer"],
            [],
        ),
    ],
)
def test_spec_changes(name: str, new: dict, extensions: list[str], refused: list[str]) -> None:
    assert spec_changes(doc(), new) == (extensions, refused)


def test_changes_inside_final_training_are_extensions() -> None:
    old, new = doc(finalTraining={"top": 1, "epochs": None}), doc(finalTraining={"top": 2, "epochs": 30})
    assert spec_changes(old, new) == (["spec.finalTraining.epochs", "spec.finalTraining.top"], [])


def test_labels_are_not_part_of_the_search_but_the_name_is() -> None:
    relabelled = {**doc(), "metadata": {"name": "s", "labels": {"team": "x"}}}
    assert spec_changes(doc(), relabelled) == ([], [])
    assert spec_changes(doc(), {**doc(), "metadata": {"name": "t"}}) == ([], ["name"])


def test_differing_fields_by_hand() -> None:
    assert differing_fields({"a": [1, {"b": 2}], "c": 3}, {"a": [1, {"b": 5}], "d": 4}) == ["a[1].b", "c", "d"]
    assert differing_fields({"a": [1, 2]}, {"a": [1]}) == ["a"]  # lists of another length differ as a whole
