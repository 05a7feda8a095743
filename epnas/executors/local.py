"""Children as local processes: ``python -m child_trainer`` per child, ``parallelism`` at a time.

A child that exits 2 (invalid input) is never retried; any other failure (non-zero
exit, signal, timeout) is retried ``retries`` times.  A timed-out child is killed.
Children stay in the caller's process group, so Ctrl-C or killing the group of
``epnas search`` stops them too: a resumed search never races an orphaned trainer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from epnas.executors.base import ChildOutcome, ChildRun

INVALID_INPUT = 2
STDERR_TAIL_CHARS = 2000


def default_trainer_command() -> list[str]:
    return [sys.executable, "-m", "child_trainer"]


class LocalExecutor:
    """Runs each child as a subprocess of ``trainer_command`` + the trainer's flags."""

    def __init__(
        self,
        *,
        parallelism: int | None = None,
        retries: int = 1,
        trainer_command: list[str] | None = None,
        env: dict[str, str] | None = None,
        endpoint: str | None = None,
    ):
        self.parallelism = max(1, parallelism or os.cpu_count() or 1)
        self.retries = retries
        self.trainer_command = trainer_command or default_trainer_command()
        self.env = {**os.environ, **(env or {})}
        self.endpoint = endpoint

    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        if not runs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.parallelism, len(runs))) as pool:
            return list(pool.map(self._run_with_retries, runs))

    def command(self, run: ChildRun, termination_log: str) -> list[str]:
        """The trainer's argument list for ``run``."""
        args = [*self.trainer_command, "--arch", run.arch_uri, "--out", run.out_uri, "--termination-log", termination_log]
        if run.weights_uri:
            args += ["--weights", run.weights_uri]
        if self.endpoint:
            args += ["--endpoint", self.endpoint]
        return args

    def _run_with_retries(self, run: ChildRun) -> ChildOutcome:
        started = time.monotonic()
        outcome = None
        for attempt in range(1, self.retries + 2):
            outcome = self._run_once(run, attempt)
            if outcome.succeeded or outcome.exit_code == INVALID_INPUT:
                break
        return ChildOutcome(outcome.child, outcome.exit_code, outcome.reason, outcome.stderr_tail, outcome.attempts, time.monotonic() - started)

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
                    reason = "Completed" if code == 0 else ("InvalidInput" if code == INVALID_INPUT else "Error")
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    code, reason = None, f"DeadlineExceeded after {run.timeout_s:g} s"
            tail = stderr_path.read_bytes()[-STDERR_TAIL_CHARS:].decode(errors="replace")
        return ChildOutcome(run.child, code, reason, tail, attempt)
