"""``epnas search FILE --repair``: rebuild a search's damaged state from what is intact, then resume.

The search's primary data are its children (``children/<child>/{arch.json,result.json,
weights.safetensors}``) and its final trainings (``final/``); everything under ``state/`` (the
checkpoint, the history, the summary, the pending plan, the policy snapshots and updates) and the
weight dictionary's ``weights/index.json`` follow from them, because the loop is deterministic
given the spec's seed and the children's results.  So the repair:

1. **finds the damage** (``find_damage``, read-only): every file the loop, ``status``, ``export``
   and ``report`` read back is checked the way they read it;
2. **replays the search** (``replay``) in memory from its seed against an overlay of the store that
   hides ``state/``, ``weights/`` and every damaged file: the loop itself runs, each child is served
   from its intact ``result.json`` (checked for its child and architecture hash) and each child the
   intact history records as failed fails again with the same reason; the replay stops at the first
   step with a child that has neither, so what it committed last is the state after the last step
   whose files are all intact (the policy is recomputed there by the same updates, the weight
   dictionary by the same merges of the children's weights);
3. **moves aside, never deletes**: every damaged file becomes ``<name>.damaged`` (``.damaged-N`` if
   that exists), every intact state file the replay does not reproduce byte for byte becomes
   ``<name>.superseded``; in the folders the loop lists (``state/history/``, ``state/updates/``,
   ``weights/objects/``) the moved file goes to the sibling folder ``<folder>-aside/`` so it is
   never read as state nor collected as garbage; each move is one line on stderr;
4. **writes the rebuilt state** and hands back the store wrapped in a ``PlanGuard``: when the
   resumed loop plans a step, a kept child whose files are for another architecture (the search
   took another path after the rollback) is moved aside (``.superseded``) and trained again
   instead of being read as a failure.

Nothing is written unless the replay ran; nothing is ever deleted.  ``summary.json`` and
``pending-step.json`` are derived and overwritten by every step: an intact one is rewritten
without a copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import safetensors
import safetensors.torch
import torch

from epnas.arch import parse_arch
from epnas.checkpoint import (
    CHECKPOINT,
    HISTORY_PREFIX,
    PENDING,
    SEARCH_FILE,
    SUMMARY,
    UPDATES_PREFIX,
    LoopState,
    read_history,
    read_state_json,
)
from epnas.errors import CorruptState, SpecError
from epnas.executors.base import ChildOutcome, ChildRun
from epnas.records import ChildRecord
from epnas.search import CHECKPOINT_KEYS, FINAL_PREFIX, WEIGHTS_PREFIX, SearchFailed, SearchLoop
from epnas.spec import ArchitectureSearch, parse_search
from epnas.store import Store, StoreError, StoreNotFound, join_uri
from epnas.strategy import make_strategy
from epnas.task import load_result, load_task
from epnas.weights import INDEX, OBJECTS, read_index

Say = Callable[[str], None]
"""Where the repair's lines go (the CLI prints them on stderr)."""

STATE_PREFIX = "state/"
CHILDREN_PREFIX = "children/"
LISTED = (
    HISTORY_PREFIX,
    UPDATES_PREFIX,
    f"{WEIGHTS_PREFIX}{OBJECTS}",
)  # folders the loop lists and reads every file of
DERIVED = (SUMMARY, PENDING)  # rewritten by every step: an intact one is overwritten without a copy
ASIDE_SUFFIXES = (".damaged", ".superseded")


@dataclass(frozen=True)
class Damage:
    """One damaged file (``key``, relative to the search root) and what is wrong with it.
    ``movable`` is false for damage that is no single file (a history step missing)."""

    key: str
    what: str
    movable: bool = True


@dataclass
class RepairReport:
    """What ``repair`` did: the damage found, every move as ``(key, aside key, why)``, where the
    replay stopped (``None``: it reproduced the whole search) and the files it wrote."""

    damage: list[Damage] = field(default_factory=list)
    moved: list[tuple[str, str, str]] = field(default_factory=list)
    stopped: str | None = None
    written: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- moving aside


def aside_key(store: Store, key: str, suffix: str) -> str:
    """Where ``key`` is moved aside: ``<key><suffix>``, ``<key><suffix>-2``, … (the first free one);
    in a folder the loop lists, under the sibling ``<folder>-aside/``."""
    for prefix in LISTED:
        if key.startswith(prefix):
            key = f"{prefix.rstrip('/')}-aside/{key[len(prefix) :]}"
            break
    target, n = f"{key}{suffix}", 1
    while store.exists(target):
        n += 1
        target = f"{key}{suffix}-{n}"
    return target


def move_aside(store: Store, key: str, suffix: str) -> str:
    """Copy ``key`` to ``aside_key``, read the copy back, and only then remove ``key``; returns
    the new key.  A copy that does not read back equal raises ``StoreError`` with ``key`` kept."""
    data = store.get_bytes(key)
    target = aside_key(store, key, suffix)
    store.put_bytes(target, data)
    if store.get_bytes(target) != data:
        raise StoreError(f"{join_uri(store.uri, target)}: the copy of {key} does not read back; {key} is kept")
    store.delete(key)
    return target


def is_aside(key: str) -> bool:
    """A file an earlier repair moved aside (never state to read)."""
    name = key.rsplit("/", 1)[-1]
    return any(s in name for s in ASIDE_SUFFIXES) or "-aside/" in key


# ---------------------------------------------------------------- finding the damage


def spec_damage(store: Store) -> Damage | None:
    """The stored ``search.yaml``'s damage (it does not decode as a search), or ``None``."""
    try:
        stored = store.get_bytes(SEARCH_FILE).decode()
        parse_search(json.loads(stored))
    except StoreNotFound:
        return None
    except (ValueError, KeyError, TypeError, AttributeError, SpecError) as err:
        return Damage(SEARCH_FILE, _first_line(err))
    return None


def move_damaged_spec(store: Store, source: str, say: Say) -> bool:
    """Before the spec is pinned: a damaged stored ``search.yaml`` is moved aside, so the pin
    writes the one in ``source`` (the search file given).  True when it moved one."""
    damage = spec_damage(store)
    if damage is None:
        return False
    target = move_aside(store, damage.key, ".damaged")
    say(f"moved aside {damage.key} ({damage.what}) to {target}; rebuilt from {source}")
    return True


def find_damage(store: Store, search: ArchitectureSearch) -> list[Damage]:
    """Every damaged file of the search at ``store`` (read-only), in the order found: the state
    files as ``SearchLoop.load_state`` reads them, the weight index and objects as ``merge`` and
    ``pull`` do, each child's and final training's task, result (for that child and that
    architecture) and weights."""
    found: list[Damage] = []
    keys = [k for k in store.list("") if not is_aside(k)]
    state = _checkpoint_damage(store, found)
    for key in sorted(k for k in keys if k.startswith(HISTORY_PREFIX)):
        _check(found, key, partial(_history_step, store, key))
    if state is not None and not any(d.key.startswith(HISTORY_PREFIX) for d in found):
        try:
            count = len(read_history(store, state.history_count))
        except CorruptState:
            count = state.history_count
        if count < state.history_count:
            found.append(
                Damage(
                    HISTORY_PREFIX.rstrip("/"),
                    f"{count} child records, the checkpoint counts {state.history_count}",
                    movable=False,
                )
            )
    if SUMMARY in keys:
        _check(found, SUMMARY, lambda: _json_dict(store, SUMMARY, "phase"))
    if PENDING in keys:
        _check(
            found, PENDING, lambda: _json_dict(store, PENDING, "episode", "step", "children", "python_rng", "torch_rng")
        )
    for key in (k for k in keys if k.startswith(UPDATES_PREFIX)):
        _check(found, key, partial(_json_dict, store, key))
    policies = [k for k in keys if k.startswith(STATE_PREFIX + "policy-") and k.endswith(".safetensors")]
    for key in policies:
        _check(found, key, partial(_policy_file, search, store, key))
    if state is not None and state.policy_file and state.policy_file not in policies:
        found.append(Damage(state.policy_file, "missing (the checkpoint names it)", movable=False))
    if f"{WEIGHTS_PREFIX}{INDEX}" in keys:
        _check(found, f"{WEIGHTS_PREFIX}{INDEX}", lambda: read_index(store, WEIGHTS_PREFIX, strict=True))
    for key in (k for k in keys if k.startswith(f"{WEIGHTS_PREFIX}{OBJECTS}")):
        _check(found, key, partial(_safetensors, store, key))
    for prefix, child_of in ((CHILDREN_PREFIX, lambda name: name), (FINAL_PREFIX, lambda name: f"final-{name}")):
        for name in sorted(
            {k[len(prefix) :].split("/", 1)[0] for k in keys if k.startswith(prefix) and k.count("/") == 2}
        ):
            _child_damage(store, found, f"{prefix}{name}", child_of(name), set(keys))
    return found


def _checkpoint_damage(store: Store, found: list[Damage]) -> LoopState | None:
    try:
        raw = read_state_json(store, CHECKPOINT)
    except StoreNotFound:
        return None
    except CorruptState as err:
        found.append(Damage(CHECKPOINT, _what(err)))
        return None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(raw, dict) or k not in raw]
    if missing:
        found.append(Damage(CHECKPOINT, f"no {', '.join(missing)}"))
        return None
    try:
        return LoopState.from_json(raw)
    except TypeError as err:
        found.append(Damage(CHECKPOINT, str(err)))
        return None


def _history_step(store: Store, key: str) -> None:
    step = read_state_json(store, key)
    if not isinstance(step, list) or not all(isinstance(r, dict) and "child" in r and "arch" in r for r in step):
        raise ValueError("not a list of child records")
    for record in step:
        ChildRecord.from_json(record)


def _json_dict(store: Store, key: str, *required: str) -> None:
    data = read_state_json(store, key)
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if not isinstance(data, dict) or missing:
        raise ValueError(f"no {', '.join(missing)}" if missing else "not a JSON object")


def _policy_file(search: ArchitectureSearch, store: Store, key: str) -> None:
    make_strategy(search.spec).load(store, key)


def _safetensors(store: Store, key: str) -> None:
    try:
        safetensors.torch.load(store.get_bytes(key))
    except Exception as err:  # safetensors raises its own SafetensorError and others on garbage
        raise ValueError(f"not a readable safetensors file ({type(err).__name__})") from None


def _child_damage(store: Store, found: list[Damage], base: str, child: str, keys: set[str]) -> None:
    """A child's (or a final training's) task, result and weights: each must read; the result must
    be this child's and for the task's architecture."""
    arch_hash = None
    if f"{base}/arch.json" in keys:
        try:
            arch_hash = load_task(store.get_bytes(f"{base}/arch.json")).arch.hash
        except (SpecError, ValueError, UnicodeDecodeError) as err:
            found.append(Damage(f"{base}/arch.json", _first_line(err)))
    if f"{base}/result.json" in keys:
        try:
            result = load_result(store.get_bytes(f"{base}/result.json"))
            if result.child != child:
                raise ValueError(f"it is the result of {result.child}, not {child}")
            if arch_hash is not None and result.arch_hash != arch_hash:
                raise ValueError(f"it is for architecture {result.arch_hash}, the task's is {arch_hash}")
        except (SpecError, ValueError, UnicodeDecodeError) as err:
            found.append(Damage(f"{base}/result.json", _first_line(err)))
    if f"{base}/weights.safetensors" in keys:
        _check(found, f"{base}/weights.safetensors", lambda: _safetensors(store, f"{base}/weights.safetensors"))


def _check(found: list[Damage], key: str, probe: Callable[[], object]) -> None:
    try:
        probe()
    except (CorruptState, StoreError, ValueError, TypeError, KeyError, safetensors.SafetensorError) as err:
        found.append(Damage(key, _what(err)))


def _what(err: BaseException) -> str:
    """The ``(…)`` of a ``damaged()`` message, else the error's first line."""
    text = _first_line(err)
    return text.split(" is damaged (", 1)[1].split("); ", 1)[0] if " is damaged (" in text else text


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------- the replay


class _Stop(Exception):
    """The replay reached a child it cannot serve: the last commit is the rollback point."""


class Overlay(Store):
    """``base`` seen through an in-memory layer: writes and deletes stay in memory; ``hidden``
    prefixes and keys read as absent (the replay rebuilds them); ``on_put`` sees every write."""

    def __init__(
        self, base: Store, hidden_prefixes: tuple[str, ...], hidden_keys: set[str], on_put: Callable[[str, bytes], None]
    ):
        self.base, self.uri = base, base.uri
        self.hidden_prefixes, self.hidden_keys, self.on_put = hidden_prefixes, hidden_keys, on_put
        self.writes: dict[str, bytes] = {}
        self.deleted: set[str] = set()

    def _hidden(self, key: str) -> bool:
        return key in self.deleted or key in self.hidden_keys or key.startswith(self.hidden_prefixes) or is_aside(key)

    def get_bytes(self, key: str) -> bytes:
        if key in self.writes:
            return self.writes[key]
        if self._hidden(key):
            raise StoreNotFound(f"{self.uri}/{key}: not found")
        return self.base.get_bytes(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.on_put(key, bytes(data))
        self.writes[key] = bytes(data)
        self.deleted.discard(key)

    def exists(self, key: str) -> bool:
        return key in self.writes or (not self._hidden(key) and self.base.exists(key))

    def list(self, prefix: str = "") -> list[str]:
        return sorted(
            {k for k in self.base.list(prefix) if not self._hidden(k)}
            | {k for k in self.writes if k.startswith(prefix)}
        )

    def delete(self, key: str) -> None:
        self.writes.pop(key, None)
        self.deleted.add(key)


class _ReplayExecutor:
    """Trains nothing: a child the intact history records as failed (same architecture) fails
    again with its recorded exit code and reason; any other run stops the replay."""

    def __init__(self, failed: dict[str, ChildRecord], planned: dict[str, str]):
        self.failed, self.planned = failed, planned

    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        outcomes = []
        for run in runs:
            record = self.failed.get(run.child)
            if record is None or self.planned.get(run.child) != record.hash:
                raise _Stop(f"{run.child} has no intact result")
            outcomes.append(ChildOutcome(run.child, record.exit_code, record.reason))
        return outcomes


def planned_hashes(data: bytes) -> dict[str, str]:
    """child → architecture hash of a stored plan (``pending-step.json``)."""
    return {item["child"]: parse_arch(item["arch"]).hash for item in json.loads(data)["children"]}


def _kept_result_hash(store: Store, child: str) -> str | None:
    """The architecture hash of ``children/<child>/result.json`` (``None``: absent or unreadable)."""
    try:
        return load_result(store.get_bytes(f"{CHILDREN_PREFIX}{child}/result.json")).arch_hash
    except (StoreNotFound, SpecError, ValueError):
        return None


def replay(
    store: Store, search: ArchitectureSearch, store_uri: str, damage: list[Damage]
) -> tuple[Overlay, str | None]:
    """Run the search from its seed against an ``Overlay`` of ``store`` hiding ``state/``,
    ``weights/`` and every damaged file (and the results of children whose weights are damaged),
    training nothing.  Returns the overlay (its writes are the rebuilt state as of its last commit)
    and why it stopped (``None``: it reproduced the whole search, final training included)."""
    hidden = {d.key for d in damage}
    hidden |= {d.key.rsplit("/", 1)[0] + "/result.json" for d in damage if d.key.endswith("/weights.safetensors")}
    failed = {}
    for key in sorted(store.list(HISTORY_PREFIX)):
        if key not in hidden and not is_aside(key):
            try:
                failed.update(
                    {
                        r["child"]: ChildRecord.from_json(r)
                        for r in read_state_json(store, key)
                        if r.get("status") == "failed"
                    }
                )
            except (CorruptState, StoreError, TypeError, AttributeError):
                continue
    planned: dict[str, str] = {}

    def on_put(key: str, data: bytes) -> None:
        if key != PENDING:
            return
        planned.update(planned_hashes(data))
        for child, arch_hash in planned_hashes(data).items():
            if f"{CHILDREN_PREFIX}{child}/result.json" in hidden:
                continue
            kept = _kept_result_hash(store, child)
            if kept is not None and kept != arch_hash:
                raise _Stop(f"the replayed plan for {child} is another architecture than its stored result")

    overlay = Overlay(store, (STATE_PREFIX, WEIGHTS_PREFIX), hidden, on_put)
    loop = SearchLoop(search, store=overlay, store_uri=store_uri, executor=_ReplayExecutor(failed, planned))
    try:
        loop.run()
    except _Stop as stop:
        return overlay, str(stop)
    except SearchFailed:
        pass
    return overlay, None


# ---------------------------------------------------------------- the repair


def repair(store: Store, search: ArchitectureSearch, store_uri: str, say: Say) -> tuple[Store, RepairReport]:
    """Repair the search at ``store`` (rooted at ``store_uri``) and return the store the resumed
    loop should use (a ``PlanGuard`` over it) with what was done.  No damage: nothing changes.
    Otherwise ``replay``, then every damaged file moved aside (``.damaged``), every intact state
    file the replay does not reproduce moved aside (``.superseded``), the rebuilt state written;
    one line to ``say`` per move and one for where the search resumes."""
    report = RepairReport(damage=find_damage(store, search))
    if not report.damage:
        say(f"--repair: the search state under {store_uri} reads intact; nothing else to rebuild, resuming as usual")
        return PlanGuard(store, say), report
    overlay, report.stopped = replay(store, search, store_uri, report.damage)
    rebuilt = _rebuilt_from(overlay, report.stopped)
    for d in report.damage:
        if d.movable and store.exists(d.key):
            _move(store, report, say, d.key, ".damaged", d.what, rebuilt(d.key))
        elif not d.movable:
            say(f"{d.key}: {d.what}; rebuilt by replaying the search from the children's results")
    for d in report.damage:  # a child's result and weights stand together: when one is damaged the child trains again
        folder = d.key.rsplit("/", 1)[0]
        if d.key.endswith("/weights.safetensors") and store.exists(f"{folder}/result.json"):
            _move(
                store,
                report,
                say,
                f"{folder}/result.json",
                ".superseded",
                "its weights are damaged",
                "the child is trained again",
            )
        if d.key.endswith("/result.json") and store.exists(f"{folder}/weights.safetensors"):
            _move(
                store,
                report,
                say,
                f"{folder}/weights.safetensors",
                ".superseded",
                "its result is damaged",
                "the child is trained again",
            )
    reuse_objects(store, overlay)
    ours = {k for k in overlay.writes if k.startswith((STATE_PREFIX, WEIGHTS_PREFIX))}
    for key in [k for k in store.list(STATE_PREFIX) if not is_aside(k)] + [f"{WEIGHTS_PREFIX}{INDEX}"]:
        if not store.exists(key) or (key in DERIVED and key in ours):
            continue  # gone, or derived and rewritten below
        if key in ours and overlay.writes[key] == store.get_bytes(key):
            continue
        _move(
            store,
            report,
            say,
            key,
            ".superseded",
            "intact, but not the state the repaired search resumes from",
            rebuilt(key),
        )
    for key in sorted(overlay.writes):
        data = overlay.writes[key]
        if key in ours:
            if not store.exists(key) or store.get_bytes(key) != data:
                store.put_bytes(key, data)
                report.written.append(key)
        elif key.startswith((CHILDREN_PREFIX, FINAL_PREFIX)) and not store.exists(key):
            store.put_bytes(key, data)
            report.written.append(key)
    _set_aside_unreferenced(store, overlay, report, say)
    say(_resume_line(overlay, report.stopped))
    return PlanGuard(store, say), report


def _set_aside_unreferenced(store: Store, overlay: Overlay, report: RepairReport, say: Say) -> None:
    """Stored weight objects the rebuilt index does not name move aside (``.superseded``): the
    next merge would collect them as garbage, and they are intact."""
    index = f"{WEIGHTS_PREFIX}{INDEX}"
    tensors = json.loads(overlay.writes[index])["tensors"] if index in overlay.writes else {}
    referenced = {f"{WEIGHTS_PREFIX}{e['object']}" for entries in tensors.values() for e in entries}
    for key in store.list(f"{WEIGHTS_PREFIX}{OBJECTS}"):
        if key not in referenced:
            _move(
                store,
                report,
                say,
                key,
                ".superseded",
                "intact, not in the rebuilt weight dictionary",
                "kept out of the shared weights",
            )


def reuse_objects(store: Store, overlay: Overlay) -> None:
    """Point the rebuilt weight index at the stored objects it reproduces: a rebuilt object that holds
    the same tensors with the same metadata as a stored one of the same child is dropped and the
    index names the stored one (safetensors does not keep the metadata's order, so equal objects
    need not be equal bytes, nor have equal content-addressed names)."""
    prefix, index = f"{WEIGHTS_PREFIX}{OBJECTS}", f"{WEIGHTS_PREFIX}{INDEX}"
    existing = [k for k in store.list(prefix) if not is_aside(k)]
    renamed: dict[str, str] = {}
    for key in [k for k in overlay.writes if k.startswith(prefix) and not store.exists(k)]:
        child = key[len(prefix) :].rsplit("-", 1)[0]
        for old in (k for k in existing if k[len(prefix) :].rsplit("-", 1)[0] == child):
            if same_tensors(overlay.writes[key], store.get_bytes(old)):
                renamed[key[len(WEIGHTS_PREFIX) :]] = old[len(WEIGHTS_PREFIX) :]
                del overlay.writes[key]
                break
    if renamed and index in overlay.writes:
        data = json.loads(overlay.writes[index])
        for entries in data["tensors"].values():
            for entry in entries:
                entry["object"] = renamed.get(entry["object"], entry["object"])
        overlay.writes[index] = (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()


def same_tensors(a: bytes, b: bytes) -> bool:
    """Two safetensors files with the same metadata and the same tensors (names, dtypes, values)."""
    try:
        ta, tb = safetensors.torch.load(a), safetensors.torch.load(b)
        meta_a, meta_b = (json.loads(d[8 : 8 + int.from_bytes(d[:8], "little")]).get("__metadata__") for d in (a, b))
    except Exception:  # an unreadable one is not the same
        return False
    return (
        meta_a == meta_b
        and ta.keys() == tb.keys()
        and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)
    )


def _rebuilt_from(overlay: Overlay, stopped: str | None) -> Callable[[str], str]:
    def rebuilt(key: str) -> str:
        if key == f"{WEIGHTS_PREFIX}{INDEX}" or key.startswith(f"{WEIGHTS_PREFIX}{OBJECTS}"):
            return "rebuilt by merging the children's weights again"
        if key.endswith("/result.json") or key.endswith("/weights.safetensors"):
            return "the child is trained again"
        if key.endswith("/arch.json"):
            return "rebuilt from the search's plan"
        if key in overlay.writes:
            return "rebuilt by replaying the search from the children's results"
        return "the resumed search writes it again" if stopped else "not part of the replayed search"

    return rebuilt


def _resume_line(overlay: Overlay, stopped: str | None) -> str:
    try:
        state = LoopState.from_json(json.loads(overlay.writes[CHECKPOINT]))
    except KeyError:
        return f"--repair: the search starts again from its seed ({stopped}); children with an intact result are not trained again"
    if state.branches is None and state.step == 0:
        where = f"after episode {state.episode} of {search_episodes(overlay)}"
    else:
        where = f"in episode {state.episode + 1} after {state.step} step{'s' * (state.step != 1)}"
    where += f", {state.history_count} children kept"
    if stopped:
        return f"--repair: rolled back to {where} ({stopped}); children with an intact result are not trained again"
    return f"--repair: rebuilt the state from the children's results ({where}); resuming"


def search_episodes(overlay: Overlay) -> int | str:
    """The budget's episodes as the replay's summary states it (``?`` when it wrote none)."""
    try:
        return json.loads(overlay.writes[SUMMARY])["episodes"]
    except (KeyError, ValueError):
        return "?"


def _move(store: Store, report: RepairReport, say: Say, key: str, suffix: str, why: str, how: str) -> None:
    target = move_aside(store, key, suffix)
    report.moved.append((key, target, why))
    say(f"moved aside {key} ({why}) to {target}; {how}")


class PlanGuard(Store):
    """``base`` for the resumed loop: when a step's plan is stored, a kept child whose result or
    task is for another architecture than the plan's is moved aside (``.superseded``), so the
    loop trains it again for the planned one; children whose files match are served as always."""

    def __init__(self, base: Store, say: Say):
        self.base, self.uri, self.say = base, base.uri, say

    def get_bytes(self, key: str) -> bytes:
        return self.base.get_bytes(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        if key == PENDING:
            for child, arch_hash in planned_hashes(data).items():
                self._check_child(f"{CHILDREN_PREFIX}{child}", arch_hash)
        self.base.put_bytes(key, data)

    def exists(self, key: str) -> bool:
        return self.base.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.base.list(prefix)

    def delete(self, key: str) -> None:
        self.base.delete(key)

    def _check_child(self, base: str, arch_hash: str) -> None:
        try:
            task_hash = load_task(self.base.get_bytes(f"{base}/arch.json")).arch.hash
        except (StoreNotFound, SpecError, ValueError, UnicodeDecodeError):
            task_hash = None
        kept = _kept_result_hash(self.base, base.rsplit("/", 1)[-1])
        if task_hash in (None, arch_hash) and kept in (None, arch_hash):
            return
        final = f"{FINAL_PREFIX}{base.rsplit('/', 1)[-1]}"  # its final training was of the old architecture too
        for key in [
            f"{folder}/{name}"
            for folder in (base, final)
            for name in ("result.json", "weights.safetensors", "arch.json")
        ]:
            if self.base.exists(key):
                target = move_aside(self.base, key, ".superseded")
                self.say(
                    f"moved aside {key} (for another architecture than the resumed search plans) to {target}; it is trained again"
                )


def repair_store(
    store: Store,
    search: ArchitectureSearch,
    store_uri: str,
    source: str,
    *,
    pin: Callable[[Store, ArchitectureSearch], None],
    say: Say,
) -> Store:
    """What ``epnas search FILE --repair`` runs before the loop: a damaged stored spec moved aside,
    the spec pinned by ``pin`` (the CLI's rule: a refused change raises before anything else is
    touched), then ``repair``; returns the store the loop runs on."""
    move_damaged_spec(store, source, say)
    pin(store, search)
    guarded, _ = repair(store, search, store_uri, say)
    return guarded
