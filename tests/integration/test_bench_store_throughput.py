"""bench/bench_store_throughput.py runs against its own MinIO with a tiny model and reports the
product's push and pull next to raw boto3 on the same bytes, and the pulled weights are exact."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_store_throughput.py"


def test_the_store_benchmark_reports_both_sides_and_their_ratio(tmp_path):
    out = tmp_path / "store.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--mib", "1", "--layers", "2", "--repeats", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())

    assert 0.9 < report["mib"] <= 1.0 and report["repeats"] == 2
    assert set(report["seconds"]) == set(report["mib_per_s"]) == {"push", "raw_push", "pull", "raw_pull"}
    assert all(v > 0 for v in report["seconds"].values())
    for side in ("push", "pull"):
        expected = report["mib_per_s"][side] / report["mib_per_s"][f"raw_{side}"]
        assert abs(report["ratio"][side] - expected) < 0.01, report
