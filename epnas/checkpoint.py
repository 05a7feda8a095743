"""Loop state in the store: ``state/checkpoint.json`` (written last), policy and optimizer tensors
as safetensors, the history of every child (one append-only file per step,
``state/history/e003-s07.json``), and the summary ``epnas status`` prints.

A checkpoint names the policy file it belongs to, so a crash between writing a new
policy and the checkpoint that refers to it never applies an update twice.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import safetensors
import safetensors.torch
import torch

from epnas.errors import CorruptState, SpecError
from epnas.pinning import spec_changes
from epnas.records import ArchJSON, TrajectoryStep
from epnas.spec import ArchitectureSearch, parse_search
from epnas.store import Store, StoreDecodeError, StoreNotFound, join_uri

CHECKPOINT = "state/checkpoint.json"
HISTORY_PREFIX = "state/history/"
SUMMARY = "state/summary.json"
PENDING = "state/pending-step.json"
SEARCH_FILE = "search.yaml"
UPDATES_PREFIX = "state/updates/"  # one JSON per episode: the policy update's loss, entropy, grad_norm
WHAT_TO_DO = "restore it from a backup, or run `epnas search FILE --repair` to rebuild from what is intact"
"""How every damaged-state message ends (``epnas.repair`` is the rebuild)."""


@dataclass(frozen=True)
class Pinned:
    """What ``pin_search`` decided: the search to run, and the fields extended or refused."""

    search: ArchitectureSearch
    extensions: list[str]
    refused: list[str]


def pinned_document(search: ArchitectureSearch) -> dict[str, Any]:
    """The search as ``search.yaml`` holds it (resolved, camelCase, no status): what is compared."""
    return search.model_dump(mode="json", by_alias=True, exclude={"status"})


def search_changes(pinned: ArchitectureSearch, new: ArchitectureSearch) -> tuple[list[str], list[str]]:
    """``(extensions, refused)``: how ``new`` differs from the search that is ``pinned``, by
    ``epnas.pinning``'s rule, compared as ``pin_search`` compares a stored ``search.yaml``.  For a
    search that is already running (the controller's edited custom resource) it says what
    ``pin_search`` will decide when the search next starts.  A change with any refused field
    takes nothing of it: ``extensions`` is empty then, as ``pin_search`` runs the stored search."""
    extensions, refused = spec_changes(pinned_document(pinned), pinned_document(new))
    return ([] if refused else extensions), refused


def pin_search(store: Store, search: ArchitectureSearch) -> Pinned:
    """Pin ``search`` in ``search.yaml`` by ``epnas.pinning``'s rule, the same for ``epnas search``
    and the controller: written once; a spec that only extends the stored one (more episodes,
    final training, trainer placement) rewrites it and runs (``extensions``); any other
    difference leaves it alone and runs the stored one, naming the fields (``refused``: the CLI
    exits 2 on them, the controller records them in a condition).  A stored file that does not
    decode raises ``CorruptState``; nothing is overwritten then.  ``search_changes`` is the same
    comparison for a search already running."""
    document = pinned_document(search)
    text = json.dumps(document, sort_keys=True, indent=2)
    try:
        existing = store.get_bytes(SEARCH_FILE).decode()
    except StoreNotFound:
        store.put_bytes(SEARCH_FILE, text.encode())
        return Pinned(search, [], [])
    except UnicodeDecodeError as err:
        raise CorruptState(_damaged_search_file(store, err)) from None
    if existing == text:
        return Pinned(search, [], [])
    try:
        stored_doc = json.loads(existing)
        stored = parse_search(stored_doc)
        extensions, refused = spec_changes(stored_doc, document)
    except (ValueError, KeyError, TypeError, AttributeError, SpecError) as err:
        raise CorruptState(_damaged_search_file(store, err)) from None
    if refused:
        return Pinned(stored, [], refused)
    if extensions:
        store.put_bytes(SEARCH_FILE, text.encode())
        return Pinned(search, extensions, [])
    return Pinned(stored, [], [])


def _damaged_search_file(store: Store, err: Exception) -> str:
    return f"{join_uri(store.uri, SEARCH_FILE)} is damaged ({err}); nothing was changed: {WHAT_TO_DO}"


@dataclass
class LoopState:
    """Everything the loop needs to continue after the last completed step.

    ``seeds`` are the networks episode ``episode`` starts from; ``branches`` each branch's current
    network (``None`` between episodes); ``trajectory[n]`` branch ``n``'s steps so far this
    episode, for the strategy's ``learn``; ``history_count`` the child records the checkpoint
    covers.  Stored as JSON (``to_json``), the same keys and shapes as ever."""

    episode: int = 0
    step: int = 0
    seeds: list[ArchJSON] = field(default_factory=list)
    branches: list[ArchJSON] | None = None
    trajectory: list[list[TrajectoryStep]] = field(default_factory=list)
    baselines: list[float] | None = None
    python_rng: list | None = None
    torch_rng: str | None = None
    policy_file: str | None = None
    history_count: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["trajectory"] = [[s.to_json() for s in branch] for branch in self.trajectory]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        """The state ``to_json`` wrote (trajectories also in the one-morph form of earlier
        checkpoints); anything else raises ``TypeError`` saying what does not read."""
        try:
            trajectory = [[TrajectoryStep.from_json(s) for s in branch] for branch in data.get("trajectory") or []]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TypeError(f"trajectory does not read: {type(err).__name__}: {err}") from None
        return cls(**{**data, "trajectory": trajectory})


def encode_python_rng(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def decode_python_rng(state: list) -> random.Random:
    rng = random.Random()
    rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


def encode_torch_rng(generator: torch.Generator) -> str:
    return base64.b64encode(generator.get_state().numpy().tobytes()).decode()


def decode_torch_rng(data: str) -> torch.Generator:
    generator = torch.Generator()
    generator.set_state(torch.frombuffer(bytearray(base64.b64decode(data)), dtype=torch.uint8))
    return generator


def save_policy(store: Store, key: str, policy: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Policy parameters as ``policy.<name>``; Adam's per-parameter state as ``optim.<i>.<field>``."""
    tensors = {f"policy.{name}": t.detach().contiguous() for name, t in policy.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().contiguous()
    store.put_bytes(key, safetensors.torch.save(tensors))


def load_policy(store: Store, key: str, policy: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore what ``save_policy`` wrote; a damaged or mismatched file raises ``CorruptState`` naming it."""
    try:
        _load_policy(store, key, policy, optimizer)
    except StoreNotFound:
        raise CorruptState(damaged(store, key, "missing (the checkpoint names it)")) from None
    except (safetensors.SafetensorError, RuntimeError, ValueError, KeyError) as err:
        raise CorruptState(damaged(store, key, _first_line(err))) from None


def _load_policy(store: Store, key: str, policy: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    tensors = safetensors.torch.load(store.get_bytes(key))
    policy.load_state_dict({name[len("policy.") :]: t for name, t in tensors.items() if name.startswith("policy.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, field_name = name.split(".", 2)
            state.setdefault(int(index), {})[field_name] = value
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def history_key(episode: int, step: int) -> str:
    return f"{HISTORY_PREFIX}e{episode:03d}-s{step:02d}.json"


def read_history(store: Store, count: int) -> list[dict]:
    """The first ``count`` child records, in order (later step files are from an uncommitted step).
    A step file that is not a JSON list of records raises ``CorruptState`` naming it."""
    records: list[dict] = []
    for key in sorted(store.list(HISTORY_PREFIX)):
        if len(records) >= count:
            break
        step = read_state_json(store, key)
        if not isinstance(step, list) or not all(isinstance(r, dict) and "child" in r and "arch" in r for r in step):
            raise CorruptState(damaged(store, key, "not a list of child records"))
        records.extend(step)
    return records[:count]


def read_state_json(store: Store, key: str) -> Any:
    """``store.get_json(key)`` for a file the search wrote: undecodable content
    (``StoreDecodeError``) is ``CorruptState`` naming the file; any other ``StoreError`` passes
    through (``StoreNotFound``: a missing file is the caller's call; an unreachable store is
    not damage, and a controller waits it out)."""
    try:
        return store.get_json(key)
    except StoreDecodeError as err:
        raise CorruptState(damaged(store, key, err.detail.strip().splitlines()[0])) from None


def damaged(store: Store, key: str, what: str) -> str:
    """The one message for a damaged state file: which file, what is wrong, what to do."""
    return f"{join_uri(store.uri, key)} is damaged ({what}); nothing was changed: {WHAT_TO_DO}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
