"""``epnas.repair``'s pieces on a directory store: where a file moves aside, that a move keeps the
bytes and never overwrites, what ``find_damage`` calls damaged, the overlay the replay runs on and
the plan guard of the resumed loop."""

from __future__ import annotations

import json

import safetensors.torch
import torch

from epnas.repair import Overlay, PlanGuard, aside_key, find_damage, is_aside, move_aside, same_tensors
from epnas.spec import parse_search
from epnas.store import FileStore, StoreNotFound

SEARCH = parse_search(
    {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ArchitectureSearch",
        "metadata": {"name": "t"},
        "spec": {
            "searchSpace": "image-layer",
            "seed": 1,
            "dataset": {"kind": "synthetic", "inputShape": [1, 8, 8], "numClasses": 4},
            "budget": {"episodes": 1, "stepsPerEpisode": 1, "branches": 1},
        },
    }
)


def test_aside_key_is_next_to_the_file_or_beside_a_listed_folder(tmp_path) -> None:
    store = FileStore(tmp_path)
    assert aside_key(store, "state/checkpoint.json", ".damaged") == "state/checkpoint.json.damaged"
    assert aside_key(store, "state/history/e000-s00.json", ".damaged") == "state/history-aside/e000-s00.json.damaged"
    assert (
        aside_key(store, "weights/objects/a.safetensors", ".superseded")
        == "weights/objects-aside/a.safetensors.superseded"
    )
    store.put_bytes("state/checkpoint.json.damaged", b"old")
    store.put_bytes("state/checkpoint.json.damaged-2", b"older")
    assert aside_key(store, "state/checkpoint.json", ".damaged") == "state/checkpoint.json.damaged-3"
    assert is_aside("state/history-aside/e000-s00.json.damaged") and is_aside("state/summary.json.superseded-2")
    assert not is_aside("state/history/e000-s00.json")


def test_move_aside_keeps_the_bytes_and_overwrites_no_earlier_copy(tmp_path) -> None:
    store = FileStore(tmp_path)
    store.put_bytes("state/summary.json", b"\xff junk")
    store.put_bytes("state/summary.json.damaged", b"an earlier one")
    assert move_aside(store, "state/summary.json", ".damaged") == "state/summary.json.damaged-2"
    assert not store.exists("state/summary.json")
    assert store.get_bytes("state/summary.json.damaged-2") == b"\xff junk"
    assert store.get_bytes("state/summary.json.damaged") == b"an earlier one"


def test_find_damage_names_each_damaged_file_and_skips_what_was_moved_aside(tmp_path) -> None:
    store = FileStore(tmp_path)
    store.put_bytes("state/checkpoint.json", b"{")
    store.put_bytes("state/history/e000-s00.json", b'{"a": 1}')
    store.put_json("state/summary.json", {"phase": "Running"})
    store.put_bytes("weights/index.json", b"garbage")
    store.put_bytes("children/e000-s00-c00/result.json", b"{")
    store.put_bytes("state/checkpoint.json.damaged", b"whatever")
    found = {d.key: d.what for d in find_damage(store, SEARCH)}
    assert set(found) == {
        "state/checkpoint.json",
        "state/history/e000-s00.json",
        "weights/index.json",
        "children/e000-s00-c00/result.json",
    }
    assert "not valid JSON" in found["state/checkpoint.json"]
    assert found["state/history/e000-s00.json"] == "not a list of child records"


def test_a_result_for_another_child_is_damage(tmp_path) -> None:
    store = FileStore(tmp_path)
    result = {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ChildResult",
        "child": "e000-s00-c01",
        "arch_hash": "abc",
        "val_accuracy": 0.5,
        "test_accuracy": 0.5,
        "train_seconds": 1.0,
        "epochs_run": 1,
    }
    store.put_json("children/e000-s00-c00/result.json", result)
    store.put_json("children/e000-s00-c01/result.json", result)
    found = {d.key: d.what for d in find_damage(store, SEARCH)}
    assert list(found) == ["children/e000-s00-c00/result.json"]
    assert "result of e000-s00-c01" in found["children/e000-s00-c00/result.json"]


def test_the_overlay_hides_and_keeps_writes_in_memory(tmp_path) -> None:
    store = FileStore(tmp_path)
    store.put_bytes("state/checkpoint.json", b"{}")
    store.put_bytes("children/a/result.json", b"r")
    store.put_bytes("children/b/result.json", b"damaged")
    seen = []
    overlay = Overlay(store, ("state/",), {"children/b/result.json"}, lambda key, data: seen.append(key))
    assert not overlay.exists("state/checkpoint.json") and not overlay.exists("children/b/result.json")
    assert overlay.get_bytes("children/a/result.json") == b"r"
    overlay.put_bytes("state/summary.json", b"s")
    overlay.delete("children/a/result.json")
    assert overlay.list("") == ["state/summary.json"] and seen == ["state/summary.json"]
    try:
        overlay.get_bytes("children/a/result.json")
    except StoreNotFound:
        pass
    assert store.get_bytes("children/a/result.json") == b"r" and not store.exists("state/summary.json"), (
        "the store was changed"
    )


def test_same_tensors_ignores_the_metadata_order_only() -> None:
    tensors = {"w": torch.arange(4.0)}
    a = safetensors.torch.save(tensors, metadata={"child": "c", "accuracy": "0.5"})
    b = safetensors.torch.save(tensors, metadata={"accuracy": "0.5", "child": "c"})
    assert same_tensors(a, b)
    assert not same_tensors(
        a, safetensors.torch.save({"w": torch.arange(4.0) + 1}, metadata={"child": "c", "accuracy": "0.5"})
    )
    assert not same_tensors(a, safetensors.torch.save(tensors, metadata={"child": "d", "accuracy": "0.5"}))
    assert not same_tensors(a, a[: len(a) // 2])


def test_the_plan_guard_moves_aside_a_child_kept_for_another_architecture(tmp_path) -> None:
    from epnas.arch import parse_arch
    from epnas.checkpoint import PENDING

    arch = {"space": "image-layer", "layers": [{"op": "avgpool", "src1": 0, "width": 3, "merge": "add"}]}
    other = {"space": "image-layer", "layers": [{"op": "maxpool", "src1": 0, "width": 3, "merge": "add"}]}
    store, lines = FileStore(tmp_path), []
    result = {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ChildResult",
        "child": "e000-s00-c00",
        "arch_hash": parse_arch(other).hash,
        "val_accuracy": 0.5,
        "test_accuracy": 0.5,
        "train_seconds": 1.0,
        "epochs_run": 1,
    }
    store.put_json("children/e000-s00-c00/result.json", result)
    store.put_json(
        "children/e000-s00-c01/result.json", {**result, "child": "e000-s00-c01", "arch_hash": parse_arch(arch).hash}
    )
    store.put_bytes("final/e000-s00-c00/result.json", b"{}")  # its final training, of the old architecture
    plan = {"children": [{"child": "e000-s00-c00", "arch": arch}, {"child": "e000-s00-c01", "arch": arch}]}
    PlanGuard(store, lines.append).put_bytes(PENDING, json.dumps(plan).encode())
    assert not store.exists("children/e000-s00-c00/result.json")
    assert json.loads(store.get_bytes("children/e000-s00-c00/result.json.superseded")) == result
    assert store.exists("children/e000-s00-c01/result.json"), "a matching child is served"
    assert len(lines) == 2 and lines[0].startswith("moved aside children/e000-s00-c00/result.json")
    assert store.get_bytes("final/e000-s00-c00/result.json.superseded") == b"{}" and not store.exists(
        "final/e000-s00-c00/result.json"
    )
    assert store.exists(PENDING)
