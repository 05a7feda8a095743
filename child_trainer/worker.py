"""``python -m child_trainer.worker``: a warm trainer process that trains one child after another.

Starting ``python -m child_trainer`` costs seconds of interpreter start and
``import torch`` per child; a worker pays that once, then runs
``child_trainer.cli.main`` in-process for every request.  ``epnas``'s
``LocalExecutor`` keeps up to ``parallelism`` of them (see
``epnas/executors/local.py``); they are reached only as this module name.

Protocol (one JSON object per line, UTF-8, in both directions):

* request, on stdin::

      {"argv": ["--arch", URI, "--out", URI, ...], "stderr": "/path/file", "termination_log": "/path/file"}

  ``argv`` is the trainer's flags (exactly what ``python -m child_trainer`` takes);
  ``stderr`` is a file that receives everything the child writes to fd 2 (and to
  fd 1 / ``sys.stdout``); it is appended to, created when missing.
  ``termination_log`` is set as ``EPNAS_TERMINATION_LOG`` for the child (optional).
* reply, on stdout, once the child ended::

      {"exit_code": N}

  ``N`` is what ``main(argv)`` returned: 0 done, 2 invalid input (never retry),
  1 any other fault.  An exception escaping ``main`` is exit code 1 with its
  traceback in the ``stderr`` file.  A request that is not a JSON object with a
  list of strings as ``argv`` is answered ``{"exit_code": 2, "error": "..."}``.
* end of file on stdin: the worker exits 0.  A worker that dies (signal, OOM)
  simply closes its stdout; the caller treats that as a failed child.

stdout belongs to the protocol only: at start the worker moves the protocol to a
private descriptor and points fd 1 at its stderr, and during a child both fd 1
and fd 2 point at the child's ``stderr`` file, so a ``print`` (or C code writing
to fd 1) cannot corrupt a reply.  stdin is likewise replaced by ``/dev/null``.
Outside a child the worker writes only to its own stderr.

Per-process state that a child changes (torch thread count, deterministic
algorithms) is restored by ``child_trainer.cli.run``; the worker restores the
environment, runs the garbage collector and empties torch's CUDA cache after each child.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import traceback
from collections.abc import Iterator
from typing import IO, Any

from epnas.errors import FAULT, INVALID_INPUT

TERMINATION_ENV = "EPNAS_TERMINATION_LOG"


def preload() -> None:
    """Import what every child needs, so the first child is as cheap as the next."""
    import torch  # noqa: F401

    import child_trainer.cli  # noqa: F401
    import child_trainer.data  # noqa: F401
    import child_trainer.train  # noqa: F401
    import epnas.build  # noqa: F401
    import epnas.metrics  # noqa: F401
    import epnas.weights  # noqa: F401

    with contextlib.suppress(ImportError):  # the digits dataset; optional
        import sklearn.datasets  # noqa: F401


@contextlib.contextmanager
def _redirected(path: str) -> Iterator[None]:
    """fd 1, fd 2, ``sys.stdout`` and ``sys.stderr`` all into ``path`` (appended) for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stream = os.fdopen(os.dup(target), "w", encoding="utf-8", errors="backslashreplace", buffering=1)
    streams = sys.stdout, sys.stderr
    try:
        os.dup2(target, 1)  # C code and anything holding the old sys.stderr object
        os.dup2(target, 2)
        sys.stdout = sys.stderr = stream
        yield
    finally:
        with contextlib.suppress(Exception):
            stream.close()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def check_request(request: Any) -> str | None:
    """What is wrong with ``request``, or None."""
    if not isinstance(request, dict):
        return "a request is a JSON object"
    argv = request.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return "'argv' must be a list of strings"
    if not isinstance(request.get("stderr"), str) or not request["stderr"]:
        return "'stderr' must be a file path"
    if request.get("termination_log") is not None and not isinstance(request["termination_log"], str):
        return "'termination_log' must be a file path"
    return None


def run_request(request: dict) -> int:
    """Train one child as ``request`` says (a checked request); return its exit code."""
    from child_trainer.cli import main

    with _redirected(request["stderr"]), _env(TERMINATION_ENV, request.get("termination_log")):
        try:
            code = main(list(request["argv"]))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else FAULT)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            code = FAULT
    _release_memory()
    return code if isinstance(code, int) else FAULT


def _release_memory() -> None:
    """Drop the child's objects, and hand cached GPU memory back for the other workers."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def serve(requests: IO[bytes], replies: IO[str]) -> int:
    """Answer every request line of ``requests`` on ``replies``; return 0 at end of file."""
    for line in iter(requests.readline, b""):
        if not line.strip():
            continue
        problem: str | None
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problem = f"not valid JSON: {err}"
        else:
            problem = check_request(request)
        if problem:
            print(f"child_trainer.worker: bad request: {problem}", file=sys.stderr, flush=True)
            reply: dict[str, Any] = {"exit_code": INVALID_INPUT, "error": problem}
        else:
            reply = {"exit_code": run_request(request)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


def main() -> int:
    # the protocol gets private descriptors; fd 0 and fd 1 are made harmless for the trainer
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        preload()
        return serve(requests, replies)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: stop quietly
        return 130
    except BrokenPipeError:  # the executor went away
        return 0


if __name__ == "__main__":
    sys.exit(main())
