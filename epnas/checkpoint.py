"""Loop state in the store: ``state/checkpoint.json`` (written last), policy and optimizer tensors
as safetensors, the history of every child (one append-only file per step,
``state/history/e003-s07.json``), and the summary ``epnas status`` prints.

A checkpoint names the policy file it belongs to, so a crash between writing a new
policy and the checkpoint that refers to it never applies an update twice.
"""

from __future__ import annotations

import base64
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import safetensors.torch
import torch

from epnas.store import Store

CHECKPOINT = "state/checkpoint.json"
HISTORY_PREFIX = "state/history/"
SUMMARY = "state/summary.json"
PENDING = "state/pending-step.json"
SEARCH_FILE = "search.yaml"
UPDATES_PREFIX = "state/updates/"  # one JSON per episode: the policy update's loss, entropy, grad_norm


@dataclass
class LoopState:
    """Everything the loop needs to continue after the last completed step."""

    episode: int = 0
    step: int = 0
    seeds: list[dict] = field(default_factory=list)
    branches: list[dict] | None = None
    trajectory: list[list[dict]] = field(default_factory=list)
    baselines: list[float] | None = None
    python_rng: list | None = None
    torch_rng: str | None = None
    policy_file: str | None = None
    history_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LoopState":
        return cls(**data)


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
    """The first ``count`` child records, in order (later step files are from an uncommitted step)."""
    records: list[dict] = []
    for key in sorted(store.list(HISTORY_PREFIX)):
        if len(records) >= count:
            break
        records.extend(store.get_json(key))
    return records[:count]
