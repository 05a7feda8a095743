"""bench/bench_scale.py at a tiny size: its own stack (control plane, node agent, MinIO), the real
controller as a subprocess with the instant trainer, one search of 4 branches and 2 searches of 2;
every figure of the report is there and positive, and both steps of every search ran."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_scale.py"
POSITIVE = (
    "children",
    "peak_in_flight",
    "wall_s",
    "controller_cpu_s",
    "cpu_ms_per_child",
    "requests",
    "requests_per_child",
    "requests_per_child_excl_leases",
    "peak_rss_mib",
    "rss_end_mib",
    "job_create_rate_per_s",
    "end_to_next_step_s",
    "end_to_next_step_max_s",
    "first_job_s",
)


def test_the_scale_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--sizes",
            "4",
            "--searches",
            "2",
            "--search-branches",
            "2",
            "--timeout-s",
            "300",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())

    one, many = report["scenarios"]
    assert (one["label"], one["searches"], one["branches"]) == ("one-4", 1, 4)
    assert (many["label"], many["searches"], many["branches"]) == ("many-2x2", 2, 2)
    for scenario in (one, many):
        assert not scenario["timed_out"] and scenario["phases"] == {"Succeeded": scenario["searches"]}, scenario
        for field in POSITIVE:
            assert scenario[field] is not None and scenario[field] > 0, (field, scenario)
        # two steps of every search trained (a repeated architecture is served from cache, not a Job)
        assert 0 < scenario["children"] <= scenario["planned_children"]
        assert scenario["peak_in_flight"] <= scenario["children"]
        kinds = scenario["requests_by_kind"]
        assert kinds["create jobs"] == scenario["children"] and sum(kinds.values()) == scenario["requests"]
        assert scenario["requests_per_child"] >= scenario["requests_per_child_excl_leases"] >= 1
    assert set(report["flatness"]["cpu_ms_per_child"]["by_branches"]) == {"4"}
    assert "| one-4 |" in done.stdout and "| many-2x2 |" in done.stdout
