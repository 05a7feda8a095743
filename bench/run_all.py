"""Runs every benchmark under bench/ in turn (``make bench``); results go in docs/benchmarks.md by hand."""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent

if __name__ == "__main__":
    failed = 0
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n## {script.name}", flush=True)
        failed |= subprocess.call([sys.executable, str(script)])
    sys.exit(failed)
