"""``epnas controller`` is ``python -m controller``'s click command, with the same flags; ``epnas`` never imports
``controller`` (it finds the command through an entry point, tests/unit/epnas/test_cli_commands.py)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_epnas_controller_runs_the_controller() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "epnas.cli", "controller", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--namespace", "--all-namespaces", "--metrics-port", "--kubeconfig"):
        assert flag in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "controller", "--namespace", "a", "--all-namespaces"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert bad.returncode == 2 and "not allowed with" in bad.stderr


def test_import_direction() -> None:
    for path in (REPO / "epnas").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+(controller|child_trainer)\b", path.read_text(), re.M), path
    for path in (REPO / "controller").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+child_trainer\b", path.read_text(), re.M), path
