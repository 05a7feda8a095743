"""Peak memory of the weight merge (``epnas.weights.merge``) against the number of children in a step.

The controller merges every step's child weights; its memory must stay flat as steps grow
(issue 12: 512 children inside a 2 GiB limit).  Each child here holds ``--floats`` float32
values (default 262,144 = 1 MiB) in four tensors whose shapes differ between children, so
that many children win a shape.  Each merge runs in a fresh process over a file store; the
process (after another one wrote the children's objects) reports its peak RSS
(``ru_maxrss``) after its imports and after the merge, and how many objects it wrote.

    python bench/bench_merge_memory.py [--children 64 128 512] [--floats 262144]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

MAKE = r"""
import sys
import torch, safetensors.torch
from epnas.store import open_store
root, n, floats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(root)
side = int((floats // 4) ** 0.5)
for i in range(n):
    grow = i % 8
    tensors = {f"layer{j}.weight": torch.randn(side + grow, side - grow) for j in range(4)}
    store.put_bytes(f"children/c{i:04d}/weights.safetensors", safetensors.torch.save(tensors))
"""

CHILD = r"""
import json, resource, sys, time
import torch, safetensors.torch
from epnas.store import open_store
from epnas.weights import merge
root, n = sys.argv[1], int(sys.argv[2])
store = open_store(root)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = [(f"children/c{i:04d}/weights.safetensors", 0.5 + (i % 97) / 1000, f"c{i:04d}") for i in range(n)]
start = time.perf_counter()
report = merge(store, "weights", results)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"children": n, "rss_before_mib": before / 1024, "peak_rss_mib": after / 1024,
                  "merge_s": seconds, "objects_written": len(report.written)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--floats", type=int, default=262_144)
    args = parser.parse_args()
    print(f"merge peak memory, {args.floats * 4 / 2**20:.1f} MiB of float32 per child, {time.strftime('%Y-%m-%d')}")
    print("| children | their weights | peak RSS before merge | peak RSS after merge | merge time | objects written |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.children:
        with tempfile.TemporaryDirectory() as tmp:
            root = f"file://{pathlib.Path(tmp)}"
            subprocess.run([sys.executable, "-c", MAKE, root, str(n), str(args.floats)], check=True)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, root, str(n)], capture_output=True, text=True, check=True
            )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {n} | {n * args.floats * 4 / 2**20:.0f} MiB | {row['rss_before_mib']:.0f} MiB | {row['peak_rss_mib']:.0f} MiB "
            f"| {row['merge_s']:.1f} s | {row['objects_written']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
