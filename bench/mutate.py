"""A small mutation run over the pure core: does the unit suite notice when the maths changes?

    python bench/mutate.py [--targets epnas/reward.py:tests/unit/epnas/test_reward.py,...] [--max-per-file 40]

For each target module, every mutable spot gets one mutant (AST rewrite of a scratch copy of
``epnas/``, never the working tree): a comparison flipped (``<`` ↔ ``>=``, ``==`` ↔ ``!=``, …),
an arithmetic operator swapped (``+`` ↔ ``-``, ``*`` ↔ ``/``, ``**`` → ``*``), a boolean
operator swapped (``and`` ↔ ``or``), a numeric constant nudged (``n`` → ``n + 1``, ``0.9`` →
``0.9 * 1.5``, ``0.0`` → ``1.0``).  The module's unit tests run against the mutant (``pytest -x -q``, the copy
first on ``PYTHONPATH``); a failing run *kills* it.  Prints one line per surviving mutant and
the share killed per module; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TARGETS = (
    "epnas/reward.py:tests/unit/epnas/test_reward.py",
    "epnas/pinning.py:tests/unit/epnas/test_pinning.py",
    "epnas/surrogate.py:tests/unit/epnas/test_surrogate.py",
    "epnas/reinforce.py:tests/unit/epnas/test_reinforce.py",
)
COMPARE = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
BINARY = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.Pow: ast.Mult,
    ast.FloorDiv: ast.Mult,
}
BOOLEAN = {ast.And: ast.Or, ast.Or: ast.And}


def spots(tree: ast.AST) -> list[tuple[int, str]]:
    """``(index, description)`` of every mutable node, in walk order (docstrings are not numbers to mutate)."""
    out = []
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in COMPARE:
            out.append((i, f"line {node.lineno}: {type(node.ops[0]).__name__} → {COMPARE[type(node.ops[0])].__name__}"))
        elif isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            out.append((i, f"line {node.lineno}: {type(node.op).__name__} → {BINARY[type(node.op)].__name__}"))
        elif isinstance(node, ast.BoolOp) and type(node.op) in BOOLEAN:
            out.append((i, f"line {node.lineno}: {type(node.op).__name__} → {BOOLEAN[type(node.op)].__name__}"))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
            out.append((i, f"line {node.lineno}: constant {node.value!r} nudged"))
    return out


def mutant(tree: ast.AST, index: int) -> str:
    tree = copy.deepcopy(tree)
    node = list(ast.walk(tree))[index]
    if isinstance(node, ast.Compare):
        node.ops[0] = COMPARE[type(node.ops[0])]()
    elif isinstance(node, ast.BinOp):
        node.op = BINARY[type(node.op)]()
    elif isinstance(node, ast.BoolOp):
        node.op = BOOLEAN[type(node.op)]()
    elif isinstance(node, ast.Constant):
        node.value = node.value + 1 if isinstance(node.value, int) or node.value == 0 else node.value * 1.5
    return ast.unparse(tree)


def run_target(module: str, tests: str, limit: int) -> dict:
    source = (REPO / module).read_text()
    tree = ast.parse(source)
    found = spots(tree)[:limit]
    killed, survivors = 0, []
    with tempfile.TemporaryDirectory() as scratch:
        copy_root = pathlib.Path(scratch)
        shutil.copytree(REPO / "epnas", copy_root / "epnas")
        env = {**os.environ, "PYTHONPATH": str(copy_root), "PYTHONDONTWRITEBYTECODE": "1"}
        for index, description in found:
            (copy_root / module).write_text(mutant(tree, index))
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", str(REPO / tests)],
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                killed += 1
            else:
                survivors.append(description)
                print(f"survived: {module} {description}", flush=True)
        (copy_root / module).write_text(source)
    return {"module": module, "tests": tests, "mutants": len(found), "killed": killed, "survivors": survivors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help="module:tests pairs, comma-separated")
    parser.add_argument(
        "--max-per-file", type=int, default=60, help="at most this many mutants per module (the first in walk order)"
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = [run_target(*target.split(":"), args.max_per_file) for target in args.targets.split(",")]
    total, killed = sum(r["mutants"] for r in results), sum(r["killed"] for r in results)
    for r in results:
        print(f"{r['module']}: {r['killed']}/{r['mutants']} mutants killed by {r['tests']}")
    print(f"total: {killed}/{total} killed ({killed / max(total, 1):.0%}) in {time.monotonic() - started:.0f} s")
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"results": results, "killed": killed, "mutants": total}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
