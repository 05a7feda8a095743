"""Locate the Go-built test binaries that `scripts/testbin` (`make testbin`) caches.

The bin dir comes from `$EPNAS_TESTBIN_DIR` when set, else from `scripts/testbin --dir`,
which derives it from the pins in `scripts/testbin.versions` without building anything.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTBIN_SCRIPT = REPO_ROOT / "scripts" / "testbin"
VERSIONS_FILE = REPO_ROOT / "scripts" / "testbin.versions"
BUILD_HINT = "build the test binaries with `make testbin` (runs scripts/testbin; cached per machine)"


class MissingBinaryError(RuntimeError):
    """A test binary is absent; the message names it and the command that builds it."""


def bin_dir() -> pathlib.Path:
    """Return the directory holding kube-apiserver, kube-controller-manager, etcd, minio, helm."""
    explicit = os.environ.get("EPNAS_TESTBIN_DIR")
    if explicit:
        return pathlib.Path(explicit)
    printed = subprocess.run([str(TESTBIN_SCRIPT), "--dir"], check=True, capture_output=True, text=True).stdout
    return pathlib.Path(printed.strip().splitlines()[-1])


def require(name: str) -> pathlib.Path:
    """Return the path of test binary `name`, or raise MissingBinaryError saying how to build it."""
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise MissingBinaryError(f"missing test binary {name!r} (looked for {path}): {BUILD_HINT}")
    return path


def pinned_version(name: str) -> str:
    """The value of pin ``name`` (e.g. KUEUE_VERSION) in scripts/testbin.versions."""
    for line in VERSIONS_FILE.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError(f"no {name} in {VERSIONS_FILE}")


def go_module_dir(module: str, version: str) -> pathlib.Path:
    """``module@version`` in the Go module cache (where scripts/testbin's build left it), fetched
    with `go mod download` when absent: for the manifests (CRDs, webhooks) a pinned module ships."""
    go = shutil.which("go")
    if go is None:
        raise MissingBinaryError(f"no `go` on PATH to find {module}@{version}: {BUILD_HINT}")
    with tempfile.TemporaryDirectory() as work:  # answers from the cache at once when it is there
        answer = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{version}"],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
    if answer.returncode != 0:
        raise MissingBinaryError(
            f"cannot get {module}@{version}: {answer.stdout.strip()[-500:]} {answer.stderr.strip()[-500:]}"
        )
    return pathlib.Path(json.loads(answer.stdout)["Dir"])
