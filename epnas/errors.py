"""The error family bad input and damaged state turn into, and the exit codes they map to.

Every error an entry point reports without a traceback is an ``EpnasError``; its class says the
exit code (``exit_code``) and the one word a termination log or a failed child carries
(``reason``).  Each entry point (``epnas``, the trainer, the controller) catches ``EpnasError``
in one place and prints ``message_lines``; any other exception is a bug and keeps its traceback.

    EpnasError                  1  a fault (``Fault``)
    ├── InvalidInput            2  input that can never succeed (``InvalidInput``): bad flags, trainer input
    │   ├── SpecError           2  an invalid search file, architecture or child task (one line per problem)
    │   ├── DatasetError        2  a dataset missing, unreadable or not the declared shape
    │   └── StoreURIError       2  a store URI that names no store (``epnas.store``)
    ├── StoreError              1  a store operation failed (``epnas.store``; ``StoreNotFound`` and
    │                              ``StoreDecodeError``, JSON that does not decode, under it)
    ├── CorruptState            1  a file the search wrote and reads back is damaged
    ├── ExportError             1  ``epnas export`` cannot be made (``epnas.export``)
    ├── ReportError             1  ``epnas report`` has nothing to report (``epnas.report``)
    └── Diverged                3  a child's training diverged (the trainer)

The classes that existed before the family keep their old builtin base too (``SpecError`` and
``DatasetError`` are ``ValueError``s; ``StoreError``, ``CorruptState``, ``ExportError`` and
``ReportError`` are ``RuntimeError``s), so every ``except`` written against those still matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

FAULT = 1
"""Exit code of every entry point for a fault: something that may work on a retry (the store was
down) or needs a person (a damaged checkpoint); the Job's backoff retries it."""

INVALID_INPUT = 2
"""Exit code of every entry point (``epnas``, the trainer, the controller) for input that can
never succeed: never retried."""

DIVERGED = 3
"""Exit code of the trainer for a child whose training diverged (a non-finite loss, or validation
loss at the end): a failed child with that reason, never retried (training is seeded, a retry
diverges again), and no weights pushed, so NaN never reaches the shared dictionary."""

NOT_RETRIED = (INVALID_INPUT, DIVERGED)
"""Exit codes an executor fails at once (the Job's ``podFailurePolicy`` ``FailJob``; no local retry)."""


def one_line(text: str) -> str:
    """``text``'s non-blank lines, stripped and joined with ``"; "`` (``"unknown error"`` if none)."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or "unknown error"


class EpnasError(Exception):
    """An error an entry point reports as a message and an exit code, never as a traceback.

    ``exit_code`` and ``reason`` are class attributes: a subclass says which it is.  The message
    names the file or the field it is about.
    """

    exit_code: ClassVar[int] = FAULT
    reason: ClassVar[str] = "Fault"

    def lines(self) -> list[str]:
        """The message as an entry point prints it: one line."""
        return [one_line(str(self))]


def message_lines(err: EpnasError, prog: str) -> list[str]:
    """What an entry point named ``prog`` prints on stderr for ``err``: ``"prog: first line"``,
    then the further lines of a ``SpecError`` (its problems) as they are."""
    first, *rest = err.lines()
    return [f"{prog}: {first}", *rest]


class InvalidInput(EpnasError):
    """Input that can never succeed (a bad flag, a bad trainer input): exit 2, never retried."""

    exit_code = INVALID_INPUT
    reason = "InvalidInput"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (a dotted path, ``spec.constraints[0].max``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(InvalidInput, ValueError):
    """Invalid search file, architecture or child task.

    ``problems`` lists every problem found, each naming its field or layer;
    ``str(err)`` is one line per problem.  ``heading``, when set, is the line printed above
    the problems (which file, how many problems); then each problem is printed indented.
    """

    def __init__(self, problems: list[Problem], *, heading: str | None = None):
        self.problems = list(problems)
        self.heading = heading
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def one(cls, path: str, message: str) -> SpecError:
        """A ``SpecError`` of one problem at ``path``."""
        return cls([Problem(path, message)])

    def lines(self) -> list[str]:
        """``heading`` and then each problem indented, or without a heading one line per problem."""
        if self.heading is None:
            return [str(p) for p in self.problems] or ["invalid input"]
        return [self.heading, *(f"  {p}" for p in self.problems)]


class DatasetError(InvalidInput, ValueError):
    """The dataset is missing, unreadable or does not match its declared shape: invalid input."""


class CorruptState(EpnasError, RuntimeError):
    """A file the search wrote and reads back is damaged: the message names the file and what
    the user can do.  Nothing is deleted or overwritten while it stands."""

    reason = "CorruptState"


class Diverged(EpnasError):
    """A child's training diverged (``TrainOutcome.diverged``): exit 3, never retried, nothing written."""

    exit_code = DIVERGED
    reason = "Diverged"
