"""Runs the real trainer (``python -m child_trainer``), appending ``start <child>`` before and
``done <child>`` after a zero exit to the file named by ``EPNAS_COUNT_LOG``."""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    args = sys.argv[1:]
    child = args[args.index("--out") + 1].rstrip("/").rsplit("/", 1)[-1]
    record("start", child)
    code = subprocess.call([sys.executable, "-m", "child_trainer", *args])
    if code == 0:
        record("done", child)
    return code


def record(event: str, child: str) -> None:
    with open(os.environ["EPNAS_COUNT_LOG"], "a") as log:
        log.write(f"{event} {child}\n")


if __name__ == "__main__":
    sys.exit(main())
