"""The error types bad input and damaged state turn into, and the exit codes they map to."""

from __future__ import annotations

from dataclasses import dataclass

INVALID_INPUT = 2
"""Exit code of every entry point (``epnas``, the trainer) for input that can never succeed: never retried."""

DIVERGED = 3
"""Exit code of the trainer for a child whose training diverged (a non-finite loss, or validation
loss at the end): a failed child with that reason, never retried (training is seeded, a retry
diverges again), and no weights pushed, so NaN never reaches the shared dictionary."""

NOT_RETRIED = (INVALID_INPUT, DIVERGED)
"""Exit codes an executor fails at once (the Job's ``podFailurePolicy`` ``FailJob``; no local retry)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (a dotted path, ``spec.constraints[0].max``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """Invalid search file, architecture or child task.

    ``problems`` lists every problem found, each naming its field or layer;
    ``str(err)`` is one line per problem.
    """

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def one(cls, path: str, message: str) -> "SpecError":
        return cls([Problem(path, message)])


class CorruptState(RuntimeError):
    """A file the search wrote and reads back is damaged: the message names the file and what
    the user can do.  Nothing is deleted or overwritten while it stands."""
