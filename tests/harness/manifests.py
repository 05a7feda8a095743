"""Small manifest builders for tests that run python snippets through the node agent."""

from __future__ import annotations

from typing import Any

PYTHON_IMAGE = "python:3.12-slim"  # any image containing "python" runs the venv python


def python_container(code: str, *, name: str = "main", **fields: Any) -> dict[str, Any]:
    """A container running `python -c code` (plus any extra container fields)."""
    return {"name": name, "image": PYTHON_IMAGE, "command": ["python", "-c", code], **fields}


def python_pod(name: str, code: str, *, restart_policy: str = "Never", **spec: Any) -> dict[str, Any]:
    """A v1 Pod running `python -c code`; extra keyword arguments go into the pod spec."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart_policy, "containers": [python_container(code)], **spec},
    }


def python_job(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A batch/v1 Job whose pod runs `python -c code`; extra keyword arguments go into the Job spec."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [python_container(code)]}},
            **spec,
        },
    }
