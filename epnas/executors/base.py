"""What the search loop hands an executor, and what comes back.

The loop writes every child's ``arch.json`` to the store, then calls
``executor.submit(runs)`` with one ``ChildRun`` per child of a step.  The executor
runs the trainer however it likes (local processes, Kubernetes Jobs) and returns
one ``ChildOutcome`` per run, in the same order.  It knows nothing of policies or
rewards: the loop reads each child's ``result.json`` from the store itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from epnas.errors import DIVERGED, INVALID_INPUT


@dataclass(frozen=True)
class ChildRun:
    """One child to train: where its task is, where its outputs go, where shared weights live."""

    search: str
    child: str
    arch_uri: str
    out_uri: str
    weights_uri: str | None
    timeout_s: float
    episode: int
    step: int
    index: int

    def trainer_args(
        self, *, termination_log: str, endpoint: str | None = None, device: str | None = None
    ) -> list[str]:
        """The trainer's flags for this child, wherever it runs (a local process or a Job's container)."""
        args = ["--arch", self.arch_uri, "--out", self.out_uri]
        if self.weights_uri:
            args += ["--weights", self.weights_uri]
        args += ["--termination-log", termination_log]
        if device:
            args += ["--device", device]
        if endpoint:
            args += ["--endpoint", endpoint]
        return args


class SearchStopped(Exception):
    """``should_stop()`` said so (e.g. the search's custom resource was deleted): the loop ends
    between steps, leaving the store as a resumable checkpoint.  Executors raise it too."""


def exit_reason(code: int | None) -> str:
    """The reason a trainer's exit code gives a child, the same wherever it ran: 0 ``Completed``,
    2 ``InvalidInput``, 3 ``Diverged`` (both never retried), anything else ``Error``."""
    if code == 0:
        return "Completed"
    return {INVALID_INPUT: "InvalidInput", DIVERGED: "Diverged"}.get(code if code is not None else -1, "Error")


@dataclass(frozen=True)
class ChildOutcome:
    """How a child's run ended: ``exit_code`` 0 means the trainer wrote its result."""

    child: str
    exit_code: int | None
    reason: str = ""
    stderr_tail: str = ""
    attempts: int = 1
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


class Executor(Protocol):
    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        """Train every run (in any order, as parallel as the executor likes); block until all ended."""
        ...
