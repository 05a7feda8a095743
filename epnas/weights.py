"""The shared weight dictionary (EPNAS parameter sharing) on a store.

Keys are the builder's state-dict names, which already encode (layer index, op type,
tensor): ``body.3_conv2d.op.conv.weight``, ``cells.s0c0.b1_conv-conv.op1.conv.weight``.
Every floating-point parameter and buffer is shared (batch-norm running statistics
included); ``num_batches_tracked`` is not.

Layout under the dictionary's prefix (``weights/``)::

    index.json                         name → list of stored shapes, best first
    objects/<child>-<sha>.safetensors  the tensors one child won in one merge

``index.json`` is ``{"apiVersion", "kind": "WeightIndex", "tensors": {name: [entry, …]}}``
with entry ``{"object", "shape", "accuracy", "child"}`` (``object`` relative to the
prefix).  A name keeps up to ``MAX_SHAPES`` distinct shapes, so a child can take
the closest one.  Objects are content-addressed and written before the index, and
the index is written last, so a reader sees the old dictionary or the new one,
never a mix; objects no longer referenced are deleted after the index switch
(trainers pull before a step and the loop merges after it, so none is reading).

* ``fit_tensor`` (pure): exact shape → the stored tensor as it is; otherwise the overlapping block is
  copied.  Channel-like dimensions align at index 0 (crop or grow); the spatial
  dimensions of 4-D kernels are centred, so 3→5 pads a zero ring and 5→3 keeps the
  centre.  Newly grown channels keep the model's fresh initialisation instead of
  zeros: a zero batch-norm γ next to a zero kernel would never receive a gradient,
  and a zero running variance would blow up evaluation.
* ``pull``: for every tensor of the model, the stored entry with the same number of
  dimensions and the smallest L1 distance between shapes (exact first); a corrupt,
  missing or mismatching object is skipped with a warning and the tensor stays fresh.
* ``merge``: for every name the children of one step wrote, the highest-accuracy
  child's tensor wins (per distinct shape); it replaces the stored tensor of that
  shape, older shapes are kept behind the new ones up to ``MAX_SHAPES``.

safetensors only: nothing read from the store is ever unpickled.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch
from torch import nn

from epnas.errors import CorruptState
from epnas.store import Store, StoreDecodeError, StoreNotFound

INDEX = "index.json"
OBJECTS = "objects/"
WEIGHTS_FILE = "weights.safetensors"
MAX_SHAPES = 4
INDEX_KIND = "WeightIndex"
_OP_NAME = re.compile(r"^(body\.\d+|cells\.[^.]+\.b\d+)_([^.]+)\.(.+)$")


@dataclass
class PullReport:
    """``inherited`` parameter elements taken from the store out of ``total``; tensor counts; warnings."""

    inherited: int
    total: int
    warnings: list[str] = field(default_factory=list)
    tensors_copied: int = 0
    tensors_fitted: int = 0

    @property
    def fraction(self) -> float:
        return self.inherited / self.total if self.total else 0.0


@dataclass
class MergeReport:
    """Names updated, objects written and deleted, warnings (skipped children)."""

    updated: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    object: str
    shape: tuple[int, ...]
    accuracy: float
    child: str

    def as_json(self) -> dict[str, Any]:
        return {"object": self.object, "shape": list(self.shape), "accuracy": self.accuracy, "child": self.child}


def parse_key(name: str) -> tuple[str, str, str]:
    """``body.3_conv2d.op.conv.weight`` → ``("body.3", "conv2d", "op.conv.weight")``.

    Cell branches give ``("cells.s0c1.b2", "conv-conv", "op1.conv.weight")``; names
    without an op (stem, head, projections) give an empty op.
    """
    match = _OP_NAME.match(name)
    if match:
        return match.group(1), match.group(2), match.group(3)
    parts = name.split(".")
    cut = 3 if parts[0] == "cells" else 1
    return ".".join(parts[:cut]), "", ".".join(parts[cut:])


def shareable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the dictionary holds: floating-point parameters and buffers (no step counters)."""
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not name.endswith("num_batches_tracked")
    }


# ---------------------------------------------------------------- pure tensor logic


def fit_tensor(stored: torch.Tensor, fresh: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``stored`` fitted into ``fresh``'s shape, and how many elements came from ``stored``.

    Same shape → ``stored`` itself in ``fresh``'s dtype and device (no copy: ``pull`` hands it
    to ``load_state_dict``, which copies; cloning 64 MiB cost as much as decoding it).  Otherwise (same number of dimensions) the overlap is
    copied: channel-like dimensions from index 0, the two spatial dimensions of a
    4-D kernel centred (3→5 leaves a zero ring around the old kernel, 5→3 keeps
    its centre).  Elements outside the overlap keep ``fresh``'s values.
    """
    if stored.dim() != fresh.dim():
        raise ValueError(f"cannot fit a {stored.dim()}-D tensor into a {fresh.dim()}-D one")
    stored = stored.to(dtype=fresh.dtype, device=fresh.device)
    if stored.shape == fresh.shape:
        return stored, stored.numel()
    spatial = (2, 3) if fresh.dim() == 4 else ()
    src, dst = [], []
    for d, (s, t) in enumerate(zip(stored.shape, fresh.shape)):
        n = min(s, t)
        if d in spatial:
            src.append(slice((s - n) // 2, (s - n) // 2 + n))
            dst.append(slice((t - n) // 2, (t - n) // 2 + n))
        else:
            src.append(slice(0, n))
            dst.append(slice(0, n))
    out = fresh.clone()
    if spatial and stored.shape[2:] != fresh.shape[2:]:
        out[dst[0], dst[1]] = 0  # inherited channels get a zero ring, not random values around the kernel
    out[tuple(dst)] = stored[tuple(src)]
    return out, math.prod(sl.stop - sl.start for sl in src)


def closest_entry(entries: list[Entry], shape: tuple[int, ...]) -> Entry | None:
    """The entry with ``shape`` exactly, else the same-rank one nearest in L1 over dimensions (first wins ties)."""
    same_rank = [e for e in entries if len(e.shape) == len(shape)]
    if not same_rank:
        return None
    return min(same_rank, key=lambda e: sum(abs(a - b) for a, b in zip(e.shape, shape)))


def merged_entries(old: list[Entry], new: list[Entry], cap: int = MAX_SHAPES) -> list[Entry]:
    """New entries (best first, one per shape) ahead of the old ones of other shapes, at most ``cap``."""
    shapes = {e.shape for e in new}
    return (new + [e for e in old if e.shape not in shapes])[:cap]


def step_winners(candidates: list[tuple[str, tuple[int, ...], float, int]]) -> dict[str, dict[tuple[int, ...], int]]:
    """``(name, shape, accuracy, child position)`` → per name and shape, the position of the best child.

    Ties go to the child listed first.
    """
    best: dict[str, dict[tuple[int, ...], tuple[float, int]]] = {}
    for name, shape, accuracy, position in candidates:
        current = best.setdefault(name, {}).get(shape)
        if current is None or accuracy > current[0]:
            best[name][shape] = (accuracy, position)
    return {name: {shape: pos for shape, (_, pos) in shapes.items()} for name, shapes in best.items()}


# ---------------------------------------------------------------- store edge


def _join(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def read_index(store: Store, prefix: str, *, strict: bool = False) -> tuple[dict[str, list[Entry]], list[str]]:
    """The dictionary's index (empty when there is none) and warnings about unreadable parts.

    A reader (``pull``) goes on without what it cannot read; with ``strict`` (``merge``, which
    rewrites the index and deletes what it no longer references) any damage raises
    ``CorruptState`` naming the file, so a damaged index never turns into lost weights.
    """
    where = f"{store.uri.rstrip('/')}/{_join(prefix, INDEX)}"
    problems: list[str] = []
    try:
        raw = store.get_json(_join(prefix, INDEX))
    except StoreNotFound:
        return {}, []
    except StoreDecodeError as err:
        raw, problems = None, [f"weight index unreadable: {err}"]
    index: dict[str, list[Entry]] = {}
    tensors = raw.get("tensors") if isinstance(raw, dict) else None
    if raw is not None and not isinstance(tensors, dict):
        problems.append("weight index has no 'tensors' mapping")
    for name, entries in (tensors or {}).items():
        try:
            index[name] = [
                Entry(str(e["object"]), tuple(int(d) for d in e["shape"]), float(e["accuracy"]), str(e["child"]))
                for e in entries
            ]
        except (KeyError, TypeError, ValueError):
            problems.append(f"weight index entry {name!r} malformed")
    if problems and strict:
        raise CorruptState(
            f"{where} is damaged ({problems[0]}); nothing was changed: restore it from a backup, "
            "or run `epnas search FILE --repair` to rebuild from what is intact"
        )
    return index, [f"{p}, skipped" for p in problems]


def _load_object(store: Store, key: str) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors object; ``ValueError`` if it cannot be decoded."""
    data = store.get_bytes(key)
    try:
        return safetensors.torch.load(data)
    except Exception as err:  # safetensors raises its own SafetensorError and others on garbage
        raise ValueError(f"{key}: not a readable safetensors object ({type(err).__name__})") from None


def pull(store: Store, prefix: str, model: nn.Module) -> PullReport:
    """Fill ``model``'s tensors from the dictionary at ``prefix``; the report counts parameter elements."""
    index, warnings = read_index(store, prefix)
    params = {name: p.numel() for name, p in model.named_parameters()}
    report = PullReport(inherited=0, total=sum(params.values()), warnings=warnings)
    objects: dict[str, dict[str, torch.Tensor] | None] = {}
    new_state: dict[str, torch.Tensor] = {}
    for name, fresh in shareable_state(model).items():
        entry = closest_entry(index.get(name, []), tuple(fresh.shape))
        if entry is None:
            continue
        stored = _stored_tensor(store, prefix, entry, name, objects, report.warnings)
        if stored is None:
            continue
        fitted, copied = fit_tensor(stored, fresh)
        new_state[name] = fitted
        report.tensors_copied += stored.shape == fresh.shape
        report.tensors_fitted += stored.shape != fresh.shape
        report.inherited += copied if name in params else 0
    model.load_state_dict(new_state, strict=False)
    return report


def _stored_tensor(store, prefix, entry: Entry, name: str, objects: dict, warnings: list[str]) -> torch.Tensor | None:
    if entry.object not in objects:
        try:
            objects[entry.object] = _load_object(store, _join(prefix, entry.object))
        except (ValueError, StoreNotFound) as err:
            objects[entry.object] = None
            warnings.append(f"weights object skipped, its tensors start fresh: {err}")
    tensors = objects[entry.object]
    if tensors is None:
        return None
    stored = tensors.get(name)
    if stored is None or tuple(stored.shape) != entry.shape or not stored.is_floating_point():
        warnings.append(f"{name}: object {entry.object} does not hold it with shape {list(entry.shape)}; starts fresh")
        return None
    return stored


def push_child(store: Store, child_prefix: str, model: nn.Module, *, metadata: dict[str, str] | None = None) -> str:
    """Write the model's shareable tensors as ``<child_prefix>/weights.safetensors``; return that key."""
    # no clone: serializing copies already (each tensor its own storage, as safetensors requires)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in shareable_state(model).items()}
    key = _join(child_prefix, WEIGHTS_FILE)
    store.put_bytes(key, safetensors.torch.save(tensors, metadata=metadata))
    return key


def merge(store: Store, prefix: str, results: list[tuple[str, float, str]]) -> MergeReport:
    """Merge one step's children ``(weights key, accuracy, child id)`` into the dictionary at ``prefix``.

    Streams: a first pass reads one child's object at a time and keeps only its tensors'
    names and shapes; a second pass reads each winning child again and writes its winning
    tensors.  Memory holds at most one child's tensors (plus its winners), whatever the number
    of children (``bench/merge_memory.py``).  Objects first, ``index.json`` last, then
    unreferenced objects are deleted.  A damaged index raises ``CorruptState`` before anything
    is written or deleted.
    """
    index, warnings = read_index(store, prefix, strict=True)
    report = MergeReport(warnings=warnings)
    candidates: list[tuple[str, tuple[int, ...], float, int]] = []
    for pos, (key, accuracy, child) in enumerate(results):
        try:
            tensors = _load_object(store, key)
        except (ValueError, StoreNotFound) as err:
            report.warnings.append(f"child {child} skipped in merge: {err}")
            continue
        candidates += [
            (name, tuple(t.shape), float(accuracy), pos) for name, t in tensors.items() if t.is_floating_point()
        ]
        del tensors
    winners = step_winners(candidates)
    won_by: dict[int, list[str]] = {}
    for name, shapes in winners.items():
        for pos in shapes.values():
            won_by.setdefault(pos, []).append(name)
    object_of: dict[int, str] = {}
    for pos, names in sorted(won_by.items()):
        key, accuracy, child = results[pos]
        loaded = _load_object(store, key)  # read again: it was readable a moment ago
        won = {name: loaded[name].contiguous() for name in names}
        del loaded
        data = safetensors.torch.save(won, metadata={"child": child, "accuracy": repr(float(accuracy))})
        obj = f"{OBJECTS}{child}-{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
        store.put_bytes(_join(prefix, obj), data)
        object_of[pos] = obj
        report.written.append(obj)
    for name, shapes in winners.items():
        new = sorted(
            (Entry(object_of[pos], shape, float(results[pos][1]), results[pos][2]) for shape, pos in shapes.items()),
            key=lambda e: -e.accuracy,
        )
        index[name] = merged_entries(index.get(name, []), new)
        report.updated.append(name)
    store.put_json(_join(prefix, INDEX), index_json(index))
    report.deleted = _collect_garbage(store, prefix, index)
    return report


def index_json(index: dict[str, list[Entry]]) -> dict[str, Any]:
    return {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": INDEX_KIND,
        "tensors": {name: [e.as_json() for e in entries] for name, entries in sorted(index.items())},
    }


def _collect_garbage(store: Store, prefix: str, index: dict[str, list[Entry]]) -> list[str]:
    referenced = {_join(prefix, e.object) for entries in index.values() for e in entries}
    stale = [key for key in store.list(_join(prefix, OBJECTS)) if key not in referenced]
    for key in stale:
        store.delete(key)
    return stale
