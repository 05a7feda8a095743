"""The loop's typed records read the JSON the store holds, earlier forms included, and write it back unchanged."""

from __future__ import annotations

import pytest

from epnas.checkpoint import CHECKPOINT, PENDING, LoopState, read_state_json
from epnas.errors import CorruptState
from epnas.records import Move, PlanItem, PlannedMove, TrajectoryStep
from epnas.search import SearchLoop
from epnas.store import FileStore, StoreError, open_store
from tests.unit.epnas.test_search import ToyExecutor, search_doc

PARENT = {"space": "image-layer", "layers": [{"op": "conv2d"}]}
MIDDLE = {"space": "image-layer", "layers": [{"op": "conv2d"}, {"op": "maxpool"}]}
CHILD = {"space": "image-layer", "layers": [{"op": "conv2d"}, {"op": "maxpool"}, {"op": "add"}]}
INSERT = {"kind": "insert", "position": 1}
KEEP = {"kind": "keep"}


def two_morph_plan() -> dict:
    """A plan item as the loop writes it: two morphs, the first degraded."""
    return {
        "child": "e000-s01-c02",
        "parent_arch": PARENT,
        "arch": CHILD,
        "action": KEEP,
        "applied": "insert+keep",
        "degraded": "insert: clamped",
        "moves": [
            {"arch": PARENT, "action": INSERT, "applied": "insert", "degraded": "insert: clamped"},
            {"arch": MIDDLE, "action": KEEP, "applied": "keep", "degraded": None},
        ],
    }


def test_a_plan_item_reads_and_writes_the_same_json() -> None:
    item = PlanItem.from_json(two_morph_plan())
    assert item.action == KEEP and item.applied == "insert+keep" and item.degraded == "insert: clamped"
    assert item.moves[0] == PlannedMove(PARENT, INSERT, "insert", "insert: clamped")
    assert item.to_json() == two_morph_plan()
    assert [m.record() for m in item.moves] == [
        {"action": INSERT, "applied": "insert", "degraded": "insert: clamped"},
        {"action": KEEP, "applied": "keep", "degraded": None},
    ]


def test_a_plan_item_of_the_one_morph_form_reads_as_one_move_from_its_parent() -> None:
    old = {"child": "c", "parent_arch": PARENT, "arch": MIDDLE, "action": INSERT, "applied": "insert", "degraded": None}
    item = PlanItem.from_json(old)
    assert item.moves == (PlannedMove(PARENT, INSERT, "insert", None),)
    assert item.to_json() == {
        **old,
        "moves": [{"arch": PARENT, "action": INSERT, "applied": "insert", "degraded": None}],
    }


def test_loop_state_keeps_trajectories_typed_and_stores_them_in_the_moves_form() -> None:
    raw = {
        "episode": 1,
        "step": 2,
        "seeds": [PARENT],
        "branches": [MIDDLE],
        "trajectory": [[{"arch": PARENT, "action": INSERT, "reward": 0.5}]],  # an earlier checkpoint's form
        "history_count": 3,
    }
    state = LoopState.from_json(raw)
    assert state.trajectory == [[TrajectoryStep((Move(PARENT, INSERT),), 0.5)]]
    again = state.to_json()
    assert again["trajectory"] == [[{"moves": [{"arch": PARENT, "action": INSERT}], "reward": 0.5}]]
    assert LoopState.from_json(again) == state
    with pytest.raises(TypeError, match="trajectory does not read"):
        LoopState.from_json({**raw, "trajectory": [[{"reward": 0.5}]]})


def loop(tmp_path) -> SearchLoop:
    uri = (tmp_path / "store").as_uri()
    return SearchLoop(search_doc(episodes=1, steps=2), store=open_store(uri), store_uri=uri, executor=ToyExecutor())


def test_a_checkpoint_whose_trajectory_does_not_read_is_damaged_naming_the_file(tmp_path) -> None:
    first = loop(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        SearchLoop(
            first.search, store=first.store, store_uri=first.store_uri, executor=ToyExecutor(crash_after=3)
        ).run()
    checkpoint = first.store.get_json(CHECKPOINT)
    assert checkpoint["trajectory"] and checkpoint["step"] == 1
    first.store.put_json(CHECKPOINT, {**checkpoint, "trajectory": [[{"moves": "nonsense"}]]})
    with pytest.raises(CorruptState, match=r"state/checkpoint\.json is damaged \(trajectory does not read"):
        loop(tmp_path).run()


def test_a_stored_plan_whose_children_do_not_read_is_damaged_naming_the_file(tmp_path) -> None:
    first = loop(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        SearchLoop(
            first.search, store=first.store, store_uri=first.store_uri, executor=ToyExecutor(crash_after=1)
        ).run()
    pending = first.store.get_json(PENDING)
    first.store.put_json(PENDING, {**pending, "children": [{"child": "e000-s00-c00"}]})
    with pytest.raises(CorruptState, match=r"state/pending-step\.json is damaged \(a planned child does not read"):
        loop(tmp_path).run()


class Unreachable(FileStore):
    """A store whose reads fail as an S3 outage does after the retries."""

    def get_bytes(self, key: str) -> bytes:
        raise StoreError(f"{self.uri}/{key}: ServiceUnavailable (HTTP 503)", transient=True)


def test_only_content_that_does_not_decode_is_damage_an_unreachable_store_is_not(tmp_path) -> None:
    store = open_store(tmp_path.as_uri())
    store.put_bytes(CHECKPOINT, b'{"episode": ')
    with pytest.raises(CorruptState, match=r"state/checkpoint\.json is damaged \(not valid JSON: Expecting value"):
        read_state_json(store, CHECKPOINT)
    with pytest.raises(StoreError, match="HTTP 503") as caught:  # the controller waits this out
        read_state_json(Unreachable(tmp_path), CHECKPOINT)
    assert caught.value.transient and not isinstance(caught.value, CorruptState)
