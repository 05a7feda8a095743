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


# ---------------------------------------------------------------- one rule, locally and in the cluster


def custom_resource(generation: int, **spec) -> dict:
    base = {"seed": 1, "budget": {"episodes": 3, "branches": 2}, "trainer": {"image": "t:1"}}
    for key, value in spec.items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) else value
    return {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ArchitectureSearch",
        "metadata": {"name": "s", "namespace": "ns", "uid": "u1", "generation": generation},
        "spec": base,
    }


class RecordingKube:
    def __init__(self) -> None:
        self.patches: list[dict] = []
        self.events: list[tuple[str, str, str]] = []

    def patch_search_status(self, *, namespace: str, name: str, status: dict) -> None:
        self.patches.append(status)

    def create_event(self, *, involved, event_type: str, reason: str, message: str, component: str) -> None:
        self.events.append((event_type, reason, message))


@pytest.mark.parametrize(
    "edit",
    [
        {"budget": {"episodes": 5}},
        {"budget": {"episodes": 2}},
        {"seed": 7},
        {"trainer": {"image": "t:2"}},
        {"budget": {"episodes": 4, "branches": 3}},
        {"finalTraining": {"top": 1}},
    ],
    ids=["more episodes", "fewer episodes", "another seed", "another image", "episodes and branches", "final training"],
)
def test_a_running_searchs_edit_is_refused_or_extended_as_a_rerun_of_epnas_search_pins_it(tmp_path, edit) -> None:
    """The controller's live edit (``SearchRunner.observe``) and ``pin_search`` (``epnas search`` run
    again, and the controller when the search starts) name the same fields and decide the same way."""
    from controller.metrics import ControllerMetrics
    from controller.runner import SearchRunner
    from epnas.checkpoint import pin_search, search_changes
    from epnas.store import open_store

    kube = RecordingKube()
    runner = SearchRunner(custom_resource(1), kube=kube, metrics=ControllerMetrics(), clock=lambda: "now")  # type: ignore[arg-type]
    started, edited = runner._parse(custom_resource(1)), runner._parse(custom_resource(2, **edit))
    store = open_store(tmp_path.as_uri())
    pin_search(store, started)
    pinned = pin_search(store, edited)  # what a rerun (locally) or a restart (in the cluster) decides
    assert search_changes(started, edited) == (pinned.extensions, pinned.refused)

    runner.pinned = started
    runner.observe(custom_resource(2, **edit))
    (condition,) = [c for c in runner.conditions if c["type"] == "SpecChangeRefused"]
    if pinned.refused:
        assert pinned.search == started and not runner.extend.is_set()
        assert condition["status"] == "True" and condition["reason"] == "SpecChanged"
        assert condition["message"].endswith(": " + ", ".join(pinned.refused))
        assert kube.events == [("Warning", "SpecChangeRefused", condition["message"])]
    else:
        assert pinned.extensions and pinned.search == edited and runner.extend.is_set()
        assert condition["status"] == "False" and condition["reason"] == "Extended"
        assert f"({', '.join(pinned.extensions)})" in condition["message"]
