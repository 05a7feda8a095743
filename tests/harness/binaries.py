"""Locate the Go-built test binaries that `scripts/testbin` (`make testbin`) caches.

The bin dir comes from `$EPNAS_TESTBIN_DIR` when set, else from `scripts/testbin --dir`,
which derives it from the pins in `scripts/testbin.versions` without building anything.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTBIN_SCRIPT = REPO_ROOT / "scripts" / "testbin"
BUILD_HINT = "build the test binaries with `make testbin` (runs scripts/testbin; cached per machine)"


class MissingBinaryError(RuntimeError):
    """A test binary is absent; the message names it and the command that builds it."""


def bin_dir() -> pathlib.Path:
    """Return the directory holding kube-apiserver, kube-controller-manager, etcd, minio, helm."""
    explicit = os.environ.get("EPNAS_TESTBIN_DIR")
    if explicit:
        return pathlib.Path(explicit)
    printed = subprocess.run(
        [str(TESTBIN_SCRIPT), "--dir"], check=True, capture_output=True, text=True
    ).stdout
    return pathlib.Path(printed.strip().splitlines()[-1])


def require(name: str) -> pathlib.Path:
    """Return the path of test binary `name`, or raise MissingBinaryError saying how to build it."""
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise MissingBinaryError(f"missing test binary {name!r} (looked for {path}): {BUILD_HINT}")
    return path
