"""Server processes for the harness: own process group, log file, kill-and-wait on stop."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

RUN_MARKER_ENV = "EPNAS_HARNESS_RUN"


def run_marker_env() -> dict[str, str]:
    """{EPNAS_HARNESS_RUN: value} when set: every process the harness starts carries it,
    so a hygiene check can find them in /proc/*/environ (empty dict otherwise)."""
    value = os.environ.get(RUN_MARKER_ENV)
    return {RUN_MARKER_ENV: value} if value else {}


def processes_with_marker(value: str) -> set[int]:
    """Pids of live (non-zombie) processes whose environment has EPNAS_HARNESS_RUN=value."""
    needle = f"{RUN_MARKER_ENV}={value}".encode()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = open(f"/proc/{entry.name}/environ", "rb").read().split(b"\0")
            state = open(f"/proc/{entry.name}/stat").read().rsplit(") ", 1)[-1][0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.add(int(entry.name))
    return found


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: pathlib.Path, *, max_bytes: int = 6000) -> str:
    """Return the last `max_bytes` of a log file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def kill_group(pgid: int, *, grace_s: float) -> None:
    """SIGTERM process group `pgid`, then SIGKILL it when it outlives `grace_s`."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ServerProcess:
    """One server binary run in its own session (process group), output appended to `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: pathlib.Path,
        env: Mapping[str, str] | None = None,
        cwd: pathlib.Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def wait_ready(self, probe: Callable[[], bool], *, timeout_s: float) -> None:
        """Call `probe` until it returns True; raise with the log tail if the server dies or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} while starting; log tail:\n"
                    + log_tail(self.log_path)
                )
            try:
                if probe():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s; log tail:\n" + log_tail(self.log_path))

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Terminate the whole process group and reap the server."""
        if self.process is None:
            return
        pgid = self.process.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            # wait() reaps it; polling the group instead would see the zombie as alive
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        kill_group(pgid, grace_s=0)  # SIGKILL the server if still there, and anything it left
        self.process.wait()
