"""What every part of the node agent shares: the logger, the pod dict type, the terminal
phases, the two errors that leave a container Waiting, and the timestamp and key helpers."""

from __future__ import annotations

import datetime
import logging
from typing import Any

LOG = logging.getLogger("epnas.node_agent")
Pod = dict[str, Any]
TERMINAL_PHASES = ("Succeeded", "Failed")


class ContainerConfigError(Exception):
    """A container cannot be configured yet (missing Secret/ConfigMap key): kubelet retries."""


class ImageNotMappedError(Exception):
    """No command prefix is known for the container's image."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: Pod) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
