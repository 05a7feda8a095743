"""Children as local processes, ``parallelism`` at a time.

Two ways to run a child:

* **warm workers** (the default with the default trainer): up to ``parallelism``
  long-lived ``python -m child_trainer.worker`` processes, started when first
  needed and reused across ``submit`` calls, each training one child after
  another, so a child pays no interpreter start and no ``import torch``.  One
  thread drives each worker over its stdin/stdout (one JSON line per child; the
  protocol is in ``child_trainer/worker.py``).  ``close()`` (or leaving the
  executor's ``with`` block, or interpreter exit) stops them.
* **one process per child**: ``trainer_command`` + the trainer's flags (default
  ``python -m child_trainer``).  A custom ``trainer_command`` always runs this
  way: it need not speak the worker protocol.

Either way: one ``ChildOutcome`` per run, in order.  A child that exits 2
(invalid input) or 3 (diverged) is never retried; any other failure (non-zero exit, signal,
timeout, a worker that died) is retried ``retries`` times.  A timed-out child is
killed (in warm mode its worker is killed and a fresh one takes its place);
a worker that dies mid-child (signal, OOM) fails that attempt with a reason such
as ``WorkerDied: killed by SIGKILL`` and the retry runs on a fresh worker.
Trainers and workers stay in the caller's process group, so Ctrl-C or killing the
group of ``epnas search`` stops them too: a resumed search never races an
orphaned trainer.

``epnas`` never imports ``child_trainer``: the worker is reached only as a
subprocess module name.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from epnas.errors import NOT_RETRIED
from epnas.executors.base import ChildOutcome, ChildRun, exit_reason

STDERR_TAIL_CHARS = 2000
WORKER_MODULE = "child_trainer.worker"
STOP_GRACE_S = 3.0  # close(): how long workers get to exit on end of input before they are killed

log = logging.getLogger(__name__)


def default_trainer_command() -> list[str]:
    return [sys.executable, "-m", "child_trainer"]


def worker_command() -> list[str]:
    return [sys.executable, "-m", WORKER_MODULE]


class LocalExecutor:
    """Runs each child on a warm worker, or as a subprocess of ``trainer_command`` + the trainer's flags.

    ``warm``: None (default) uses warm workers exactly when ``trainer_command`` is None.
    """

    def __init__(
        self,
        *,
        parallelism: int | None = None,
        retries: int = 1,
        trainer_command: list[str] | None = None,
        env: dict[str, str] | None = None,
        endpoint: str | None = None,
        warm: bool | None = None,
    ):
        if warm and trainer_command:
            raise ValueError("warm workers run the default trainer: a custom trainer_command needs warm=False")
        self.parallelism = max(1, parallelism or os.cpu_count() or 1)
        self.retries = retries
        self.trainer_command = trainer_command or default_trainer_command()
        self.env = {**os.environ, **(env or {})}
        self.endpoint = endpoint
        self.warm = trainer_command is None if warm is None else bool(warm)
        self._workers: list[_Worker | None] = [None] * self.parallelism  # one slot per child at once
        self._free = list(range(self.parallelism))
        self._slot_freed = threading.Condition()
        self._stopping = threading.Event()
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)  # also runs at interpreter exit

    # ------------------------------------------------------------ public

    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        if not runs:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.parallelism, len(runs)), thread_name_prefix="epnas-child")
        try:
            futures = [pool.submit(self._run_with_retries, run) for run in runs]
            return [future.result() for future in futures]
        except BaseException:  # Ctrl-C, or a fault in a thread: no retries, no new workers, kill the running ones
            self._stopping.set()
            for worker in list(self._workers):  # their threads see them die and clean up
                if worker is not None:
                    worker.signal_kill()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._stopping.clear()

    def worker_pids(self) -> list[int]:
        """Process ids of the live warm workers (empty in one-process-per-child mode)."""
        return [w.pid for w in list(self._workers) if w is not None and w.alive()]

    def close(self) -> None:
        """Stop the warm workers: end of input, a short grace, then SIGKILL.  A later ``submit`` starts new ones."""
        _stop_workers(self._workers)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def command(self, run: ChildRun, termination_log: str) -> list[str]:
        """The trainer's argument list for ``run`` (one process per child)."""
        return [*self.trainer_command, *self.trainer_args(run, termination_log)]

    def trainer_args(self, run: ChildRun, termination_log: str) -> list[str]:
        """The trainer's flags for ``run`` (``ChildRun.trainer_args``, with this executor's endpoint)."""
        return run.trainer_args(termination_log=termination_log, endpoint=self.endpoint)

    # ------------------------------------------------------------ retries

    def _run_with_retries(self, run: ChildRun) -> ChildOutcome:
        started = time.monotonic()
        outcome = None
        slot = self._acquire() if self.warm else None
        try:
            for attempt in range(1, self.retries + 2):
                outcome = self._run_warm(run, attempt, slot) if slot is not None else self._run_once(run, attempt)
                if outcome.succeeded or outcome.exit_code in NOT_RETRIED or self._stopping.is_set():
                    break
                log.info("child %s: attempt %d failed: %s", run.child, attempt, outcome.reason)
        finally:
            if slot is not None:
                self._release(slot)
        assert outcome is not None  # the loop runs at least once
        return ChildOutcome(
            outcome.child,
            outcome.exit_code,
            outcome.reason,
            outcome.stderr_tail,
            outcome.attempts,
            time.monotonic() - started,
        )

    # ------------------------------------------------------------ one process per child

    def _run_once(self, run: ChildRun, attempt: int) -> ChildOutcome:
        with tempfile.TemporaryDirectory(prefix=f"epnas-{run.child}-") as tmp:
            termination_log = str(Path(tmp) / "termination-log")
            stderr_path = Path(tmp) / "stderr"
            with open(stderr_path, "wb") as stderr:
                proc = subprocess.Popen(
                    self.command(run, termination_log),
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env={**self.env, "EPNAS_TERMINATION_LOG": termination_log},
                )
                try:
                    code = proc.wait(timeout=run.timeout_s)
                    reason = exit_reason(code)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    code, reason = None, f"DeadlineExceeded after {run.timeout_s:g} s"
            tail = stderr_path.read_bytes()[-STDERR_TAIL_CHARS:].decode(errors="replace")
        return ChildOutcome(run.child, code, reason, tail, attempt)

    # ------------------------------------------------------------ warm workers

    def _acquire(self) -> int:
        """A free slot, preferring one whose worker is already running."""
        with self._slot_freed:
            while not self._free:
                self._slot_freed.wait()
            slot = next((s for s in self._free if self._workers[s] is not None), self._free[0])
            self._free.remove(slot)
            return slot

    def _release(self, slot: int) -> None:
        with self._slot_freed:
            self._free.append(slot)
            self._slot_freed.notify()

    def _worker_in(self, slot: int) -> _Worker:
        worker = self._workers[slot]
        if worker is not None and not worker.alive():  # died while idle: no child was on it
            worker.kill()
            worker = None
        if worker is None:
            if self._stopping.is_set():
                raise _WorkerDied("Aborted: the executor is stopping")
            worker = self._workers[slot] = _Worker(self.env)
        return worker

    def _run_warm(self, run: ChildRun, attempt: int, slot: int) -> ChildOutcome:
        with tempfile.TemporaryDirectory(prefix=f"epnas-{run.child}-") as tmp:
            termination_log = str(Path(tmp) / "termination-log")
            stderr_path = Path(tmp) / "stderr"
            stderr_path.touch()
            request = {
                "argv": self.trainer_args(run, termination_log),
                "stderr": str(stderr_path),
                "termination_log": termination_log,
            }
            worker_log = b""
            worker = None
            try:
                worker = self._worker_in(slot)
                code = worker.request(request, run.timeout_s)
                reason = exit_reason(code)
            except _DeadlineExceeded:
                code, reason = None, f"DeadlineExceeded after {run.timeout_s:g} s"
            except _WorkerDied as died:
                code, reason, worker_log = None, died.reason, died.log_tail
            if code is None and worker is not None:  # killed, dead or confused: a fresh one next time
                worker.kill()
                if self._workers[slot] is worker:
                    self._workers[slot] = None
            tail = (stderr_path.read_bytes() + worker_log)[-STDERR_TAIL_CHARS:].decode(errors="replace")
        return ChildOutcome(run.child, code, reason, tail, attempt)


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "closed its output"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _DeadlineExceeded(Exception):
    pass


class _WorkerDied(Exception):
    def __init__(self, reason: str, log_tail: bytes = b""):
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


class _Worker:
    """One ``python -m child_trainer.worker``: its process, pipes and its own stderr (a temporary file)."""

    def __init__(self, env: dict[str, str]):
        self.log: IO[bytes] = tempfile.TemporaryFile(prefix="epnas-worker-")
        try:
            # same process group as the caller (no start_new_session): Ctrl-C and killpg reach it
            self.proc = subprocess.Popen(
                worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env
            )
        except BaseException:
            self.log.close()
            raise
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, request: dict, timeout_s: float | None) -> int:
        """Send one request; return the child's exit code.  Raises ``_DeadlineExceeded`` or ``_WorkerDied``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None  # started with both as pipes
        try:
            stdin.write((json.dumps(request) + "\n").encode())
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise self._died() from None
        fd = stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _DeadlineExceeded()
            try:
                ready, _, _ = select.select([fd], [], [], remaining)
            except (OSError, ValueError):  # the pipe was closed under us (close() or an abort)
                raise self._died() from None
            if not ready:
                raise _DeadlineExceeded()
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise self._died()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            code = json.loads(line)["exit_code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if not isinstance(code, int) or isinstance(code, bool):
            self.kill()
            raise _WorkerDied(f"WorkerError: bad reply {line[:200]!r}", self.log_tail())
        return code

    def _died(self) -> _WorkerDied:
        try:
            returncode = self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # closed its output but lives on: not a worker any more
            self.kill()
            return _WorkerDied("WorkerDied: closed its output", self.log_tail())
        return _WorkerDied(f"WorkerDied: {_exit_description(returncode)}", self.log_tail())

    def log_tail(self) -> bytes:
        """The last bytes of the worker's own stderr (read without moving the worker's file offset)."""
        try:
            fd = self.log.fileno()
            size = os.fstat(fd).st_size
            return os.pread(fd, STDERR_TAIL_CHARS, max(0, size - STDERR_TAIL_CHARS))
        except (OSError, ValueError):
            return b""

    def end_input(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def stop(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for the worker to exit (after ``end_input``), then kill it."""
        try:
            self.proc.wait(timeout=max(0.0, grace_s))
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def signal_kill(self) -> None:
        """SIGKILL, nothing else: safe while another thread is talking to the worker."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL, reap, close the pipes and the log (by the thread that owns the worker)."""
        self.signal_kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except (OSError, ValueError):
                pass
        self.log.close()


def _stop_workers(workers: list[_Worker | None], grace_s: float = STOP_GRACE_S) -> None:
    """End every worker's input, give them ``grace_s`` together to exit, kill the rest; empty the slots."""
    live = [w for w in workers if w is not None]
    for slot in range(len(workers)):
        workers[slot] = None
    for worker in live:
        worker.end_input()
    deadline = time.monotonic() + grace_s
    for worker in live:
        worker.stop(deadline - time.monotonic())
