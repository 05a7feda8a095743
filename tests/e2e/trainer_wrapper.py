"""Test-only trainer: records every start and success, follows failure rules, then runs the real
trainer (``python -m child_trainer``, same arguments).

State lives in /tmp/epnas-e2e-trainer/<bucket>/ (the bucket of ``--out``): ``starts`` and
``done`` (one child id per line) and ``rules.json`` ({child: {"exit": code, "times": n}}: the
child's first n attempts exit with that code, writing a termination summary like the trainer;
{child: {"sleep_s": s}}: every attempt waits s seconds before training).
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import time

STATE = pathlib.Path("/tmp/epnas-e2e-trainer")


def record(state: pathlib.Path, kind: str, child: str) -> int:
    """Append ``child`` to ``state/kind``; returns how often it is there now."""
    with open(state / kind, "a+") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(child + "\n")
        log.flush()
        log.seek(0)
        return log.read().split().count(child)


def main() -> int:
    args = sys.argv[1:]
    out = args[args.index("--out") + 1].rstrip("/")
    child = out.rsplit("/", 1)[-1]
    state = STATE / out.split("/")[2]
    state.mkdir(parents=True, exist_ok=True)
    attempt = record(state, "starts", child)
    rules_file = state / "rules.json"
    rule = json.loads(rules_file.read_text()).get(child) if rules_file.exists() else None
    if rule and rule.get("sleep_s"):
        time.sleep(float(rule["sleep_s"]))
    if rule and "exit" in rule and attempt <= rule.get("times", 1):
        log = os.environ.get("EPNAS_TERMINATION_LOG")
        if log:
            pathlib.Path(log).write_text(
                json.dumps(
                    {"exitCode": rule["exit"], "reason": "TestRule", "message": f"test rule: exit {rule['exit']}"}
                )
            )
        return int(rule["exit"])
    code = subprocess.call([sys.executable, "-m", "child_trainer", *args])
    if code == 0:
        record(state, "done", child)
    return code


if __name__ == "__main__":
    sys.exit(main())
