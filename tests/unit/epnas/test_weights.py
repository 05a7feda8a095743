"""Shared weight dictionary: fitting tensors, pull, push, merge."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from epnas.arch import parse_arch
from epnas.build import build_model
from epnas.errors import CorruptState
from epnas.store import open_store
from epnas.weights import (
    Entry,
    closest_entry,
    fit_tensor,
    merge,
    merged_entries,
    parse_key,
    pull,
    push_child,
    read_index,
    shareable_state,
    step_winners,
)


def conv_arch(channels: int = 16, width: int = 3, op: str = "conv2d", extra: list | None = None):
    layers = [{"op": op, "src1": 0, "channels": channels, "width": width, "activation": "relu"}] + (extra or [])
    return parse_arch({"space": "image-layer", "layers": layers})


def model_of(arch, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(arch, (1, 8, 8), 10)


@pytest.fixture()
def store(tmp_path):
    return open_store(tmp_path.as_uri())


# ---------------------------------------------------------------- fit_tensor


def ring(t):
    """``t`` with a one-element zero ring around its two last (spatial) dimensions: 3×3 → 5×5."""
    return torch.nn.functional.pad(t, (1, 1, 1, 1))


# expected(stored, fresh): the fitted tensor, written out by hand for each case
@pytest.mark.parametrize(
    ("name", "stored_shape", "fresh_shape", "copied", "expected"),
    [
        ("same shape", (4, 2, 3, 3), (4, 2, 3, 3), 72, lambda s, f: s),
        ("grow out channels", (4, 2, 3, 3), (6, 2, 3, 3), 72, lambda s, f: torch.cat([s, f[4:]])),
        ("shrink out channels", (6, 2, 3, 3), (4, 2, 3, 3), 72, lambda s, f: s[:4]),
        ("grow in channels", (4, 2, 3, 3), (4, 3, 3, 3), 72, lambda s, f: torch.cat([s, f[:, 2:]], dim=1)),
        ("kernel 3 to 5", (4, 2, 3, 3), (4, 2, 5, 5), 72, lambda s, f: ring(s)),
        ("kernel 5 to 3", (4, 2, 5, 5), (4, 2, 3, 3), 72, lambda s, f: s[:, :, 1:4, 1:4]),
        ("depthwise grow", (4, 1, 3, 3), (8, 1, 5, 5), 36, lambda s, f: torch.cat([ring(s), f[4:]])),
        ("vector shrink", (8,), (5,), 5, lambda s, f: s[:5]),
        ("vector grow", (3,), (5,), 3, lambda s, f: torch.cat([s, f[3:]])),
    ],
)
def test_fit_tensor_copies_the_overlap(name, stored_shape, fresh_shape, copied, expected):
    stored = torch.arange(1, math_prod(stored_shape) + 1, dtype=torch.float32).reshape(stored_shape)
    fresh = torch.full(fresh_shape, -7.0)
    out, n = fit_tensor(stored, fresh)
    assert torch.equal(out, expected(stored, fresh))
    assert n == copied
    assert torch.equal(fresh, torch.full(fresh_shape, -7.0))  # the fresh tensor itself is not written


def math_prod(shape):
    total = 1
    for d in shape:
        total *= d
    return total


def test_kernel_3_to_5_pads_a_zero_ring_centred():
    stored = torch.randn(2, 2, 3, 3)
    out, _ = fit_tensor(stored, torch.full((2, 2, 5, 5), 9.0))
    assert torch.equal(out[:, :, 1:4, 1:4], stored)
    ring = out.clone()
    ring[:, :, 1:4, 1:4] = 0
    assert torch.count_nonzero(ring) == 0


def test_kernel_5_to_3_keeps_the_centre():
    stored = torch.randn(2, 2, 5, 5)
    out, _ = fit_tensor(stored, torch.zeros(2, 2, 3, 3))
    assert torch.equal(out, stored[:, :, 1:4, 1:4])


def test_grown_channels_keep_fresh_values_and_get_their_kernel_ring_only_when_inherited():
    stored = torch.ones(2, 1, 3, 3)
    fresh = torch.full((4, 1, 5, 5), 5.0)
    out, n = fit_tensor(stored, fresh)
    assert n == 18
    assert torch.equal(out[2:], fresh[2:])
    assert out[:2, :, 0, 0].abs().sum() == 0
    assert torch.equal(out[:2, :, 1:4, 1:4], stored)


def test_depthwise_shrink_crops_channels_and_centre():
    stored = torch.randn(8, 1, 5, 5)
    out, n = fit_tensor(stored, torch.zeros(4, 1, 3, 3))
    assert torch.equal(out, stored[:4, :, 1:4, 1:4])
    assert n == 36


def test_rank_mismatch_is_refused():
    with pytest.raises(ValueError):
        fit_tensor(torch.zeros(3), torch.zeros(3, 1))


# ---------------------------------------------------------------- choice and merge rules


def test_closest_entry_prefers_exact_then_l1_then_first():
    entries = [Entry("a", (4, 4, 3, 3), 0.5, "x"), Entry("b", (8, 4, 3, 3), 0.9, "y"), Entry("c", (4,), 1.0, "z")]
    assert closest_entry(entries, (8, 4, 3, 3)).object == "b"
    assert closest_entry(entries, (5, 4, 3, 3)).object == "a"
    assert closest_entry(entries, (6, 4, 3, 3)).object == "a"
    assert closest_entry(entries, (7,)).object == "c"
    assert closest_entry(entries, (1, 1)) is None


def test_step_winners_best_accuracy_per_shape_first_wins_ties():
    winners = step_winners(
        [("w", (2,), 0.5, 0), ("w", (2,), 0.7, 1), ("w", (3,), 0.4, 2), ("v", (2,), 0.7, 3), ("v", (2,), 0.7, 4)]
    )
    assert winners == {"w": {(2,): 1, (3,): 2}, "v": {(2,): 3}}


def test_merged_entries_new_first_then_other_old_shapes_capped():
    old = [Entry(f"o{i}", (i,), 0.9, "old") for i in range(1, 5)]
    new = [Entry("n", (2,), 0.1, "new")]
    merged = merged_entries(old, new, cap=4)
    assert [e.object for e in merged] == ["n", "o1", "o3", "o4"]


def test_parse_key_layer_op_tensor():
    assert parse_key("body.3_conv2d.op.conv.weight") == ("body.3", "conv2d", "op.conv.weight")
    assert parse_key("cells.s0c1.b2_conv-conv.op1.conv.weight") == ("cells.s0c1.b2", "conv-conv", "op1.conv.weight")
    assert parse_key("head.fc.bias") == ("head", "", "fc.bias")


# ---------------------------------------------------------------- store round trips


def test_push_then_merge_then_pull_copies_exact_shapes(store):
    model = model_of(conv_arch())
    key = push_child(store, "children/e000-s00-c00", model)
    merge(store, "weights/", [(key, 0.8, "e000-s00-c00")])
    fresh = model_of(conv_arch(), seed=1)
    report = pull(store, "weights/", fresh)
    assert report.inherited == report.total > 0
    assert report.fraction == 1.0 and report.warnings == []
    for name, tensor in shareable_state(model).items():
        assert torch.equal(shareable_state(fresh)[name], tensor), name
    assert "num_batches_tracked" not in json.dumps(store.get_json("weights/index.json"))


def _pulled(store, parent, child):
    """Push and merge ``parent``, pull into ``child``: (parent's, child's fresh, child's pulled state, report)."""
    merge(store, "weights", [(push_child(store, "children/a", parent), 0.5, "a")])
    before = {name: t.clone() for name, t in shareable_state(child).items()}
    report = pull(store, "weights", child)
    return shareable_state(parent), before, shareable_state(child), report


def test_pull_grows_channels_and_kernel(store):
    old, fresh, new, report = _pulled(store, model_of(conv_arch(16, 3)), model_of(conv_arch(32, 5), seed=3))
    conv = "body.0_conv2d.op.conv.weight"
    # the parent's 16 kernels, each in a zero ring; the other 16 are the child's own
    assert torch.equal(new[conv], torch.cat([ring(old[conv]), fresh[conv][16:]]))
    for bn in ("weight", "bias", "running_mean", "running_var"):
        name = f"body.0_conv2d.op.bn.{bn}"
        assert torch.equal(new[name], torch.cat([old[name], fresh[name][16:]])), name
    assert torch.equal(
        new["head.fc.weight"], torch.cat([old["head.fc.weight"], fresh["head.fc.weight"][:, 16:]], dim=1)
    )
    assert torch.equal(new["head.fc.bias"], old["head.fc.bias"])
    # parameters only: conv 16·9 + bn 2·16 + fc 10·16 + 10, out of 32·25 + 2·32 + 10·32 + 10
    assert (report.inherited, report.total) == (346, 1194)
    assert (report.tensors_copied, report.tensors_fitted) == (1, 6)


def test_pull_depthwise_from_smaller(store):
    parent = model_of(conv_arch(16, 5, op="dep-sep-conv2d"))
    old, fresh, new, report = _pulled(store, parent, model_of(conv_arch(32, 3, op="dep-sep-conv2d"), seed=3))
    dw, pw = "body.0_dep-sep-conv2d.op.dw.weight", "body.0_dep-sep-conv2d.op.pw.weight"
    assert torch.equal(new[dw], old[dw][:, :, 1:4, 1:4])  # the 5×5 kernel's centre
    assert torch.equal(new[pw], torch.cat([old[pw], fresh[pw][16:]]))
    # dw 9 + pw 16 + bn 2·16 + fc 10·16 + 10, out of 9 + 32 + 2·32 + 10·32 + 10
    assert (report.inherited, report.total) == (227, 435)


def test_pull_without_dictionary_inherits_nothing(store):
    report = pull(store, "weights/", model_of(conv_arch()))
    assert report.inherited == 0 and report.warnings == []


def test_merge_keeps_best_child_per_key_and_writes_index_last(store, monkeypatch):
    low, high = model_of(conv_arch(), seed=1), model_of(conv_arch(), seed=2)
    k_low = push_child(store, "children/low", low)
    k_high = push_child(store, "children/high", high)
    order: list[str] = []
    original = type(store).put_bytes

    def recording(self, key, data):
        order.append(key)
        return original(self, key, data)

    monkeypatch.setattr(type(store), "put_bytes", recording)
    report = merge(store, "weights/", [(k_low, 0.3, "low"), (k_high, 0.9, "high")])
    assert order[-1] == "weights/index.json"
    assert all(k.startswith("weights/objects/") for k in order[:-1])
    index, _ = read_index(store, "weights/")
    assert {e.child for entries in index.values() for e in entries} == {"high"}
    fresh = model_of(conv_arch(), seed=5)
    pull(store, "weights/", fresh)
    name = "body.0_conv2d.op.conv.weight"
    assert torch.equal(fresh.state_dict()[name], high.state_dict()[name])
    assert report.updated


def test_merge_replaces_same_shape_and_keeps_other_shapes(store):
    merge(store, "w", [(push_child(store, "c/a", model_of(conv_arch(16))), 0.9, "a")])
    merge(store, "w", [(push_child(store, "c/b", model_of(conv_arch(32))), 0.4, "b")])
    merge(store, "w", [(push_child(store, "c/c", model_of(conv_arch(16))), 0.2, "c")])
    index, _ = read_index(store, "w")
    entries = index["body.0_conv2d.op.conv.weight"]
    assert [(e.child, e.shape[0]) for e in entries] == [("c", 16), ("b", 32)]
    referenced = {f"w/{e.object}" for es in index.values() for e in es}
    assert set(store.list("w/objects/")) == referenced


def test_corrupt_object_is_skipped_with_a_warning(store):
    key = push_child(store, "children/a", model_of(conv_arch()))
    merge(store, "weights", [(key, 0.5, "a")])
    for obj in store.list("weights/objects/"):
        store.put_bytes(obj, b"garbage, not safetensors")
    report = pull(store, "weights", model_of(conv_arch(), seed=9))
    assert report.inherited == 0
    assert report.warnings and "skipped" in report.warnings[0]


def test_mismatching_object_is_skipped(store):
    key = push_child(store, "children/a", model_of(conv_arch()))
    merge(store, "weights", [(key, 0.5, "a")])
    obj = store.list("weights/objects/")[0]
    tensors = safetensors.torch.load(store.get_bytes(obj))
    tensors["head.fc.weight"] = torch.zeros(3, 3)
    store.put_bytes(obj, safetensors.torch.save(tensors))
    fresh = model_of(conv_arch(), seed=9)
    before = {name: t.clone() for name, t in shareable_state(fresh).items()}
    report = pull(store, "weights", fresh)
    assert any("head.fc.weight" in w for w in report.warnings)
    assert torch.equal(shareable_state(fresh)["head.fc.weight"], before["head.fc.weight"])  # starts fresh
    assert torch.equal(shareable_state(fresh)["head.fc.bias"], tensors["head.fc.bias"])  # the rest is inherited
    assert report.inherited == report.total - 160


def test_merge_skips_a_corrupt_child(store):
    good = push_child(store, "children/good", model_of(conv_arch()))
    store.put_bytes("children/bad/weights.safetensors", b"\x00" * 10)
    report = merge(store, "weights", [("children/bad/weights.safetensors", 0.99, "bad"), (good, 0.1, "good")])
    assert any("bad" in w for w in report.warnings)
    index, _ = read_index(store, "weights")
    assert {e.child for es in index.values() for e in es} == {"good"}


def test_cell_network_round_trip(store):
    arch = parse_arch(
        {
            "space": "image-module",
            "cell": {"branches": [{"type": "conv-maxpool", "src1": 0, "src2": 0, "channels": 8, "width": 3}]},
            "stack": {"stem_channels": 8, "stages": 1},
        }
    )
    torch.manual_seed(0)
    model = build_model(arch, (3, 8, 8), 10)
    merge(store, "weights", [(push_child(store, "children/a", model), 0.5, "a")])
    torch.manual_seed(1)
    fresh = build_model(arch, (3, 8, 8), 10)
    assert pull(store, "weights", fresh).fraction == 1.0
    pulled = shareable_state(fresh)
    assert pulled.keys() == shareable_state(model).keys()
    for name, tensor in shareable_state(model).items():
        assert torch.equal(pulled[name], tensor), name


@pytest.mark.parametrize("damage", [b"{truncated", b"[]", b'{"tensors": {"x": [{"object": 1}]}}'])
def test_a_damaged_index_stops_the_merge_and_loses_nothing(store, damage: bytes):
    merge(store, "weights", [(push_child(store, "children/a", model_of(conv_arch())), 0.5, "a")])
    before = {key: store.get_bytes(key) for key in store.list("weights/")}
    store.put_bytes("weights/index.json", damage)
    before["weights/index.json"] = damage
    later = push_child(store, "children/b", model_of(conv_arch(32)))
    with pytest.raises(CorruptState, match=r"weights/index\.json is damaged.*nothing was changed"):
        merge(store, "weights", [(later, 0.9, "b")])
    assert {key: store.get_bytes(key) for key in store.list("weights/")} == before  # byte for byte: nothing deleted
    # a trainer reading the damaged index still trains, from scratch where it cannot read
    report = pull(store, "weights", model_of(conv_arch(), seed=3))
    assert report.warnings and report.inherited == 0
