"""bench/bench_gpu_trainer.py runs on CPU with a tiny budget and reports both rows."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[3] / "bench" / "bench_gpu_trainer.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_trainer", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("precision, resolved", [("auto", "fp32"), ("fp16", "fp16")])
def test_the_benchmark_runs_on_cpu_and_reports_both_rows(bench, capsys, precision, resolved):
    argv = [
        "--device",
        "cpu",
        "--json",
        "--precision",
        precision,
        "--batch",
        "8",
        "--steps",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--width",
        "4",
        "--threads",
        "1",
    ]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu" and report["precision"] == resolved and report["channels_last"] is False
    assert [row["name"] for row in report["rows"]] == ["trainer", "hand-written AMP"]
    for row in report["rows"]:
        assert row["images_per_s"] > 0 and len(row["repeats"]) == 2 and all(r > 0 for r in row["repeats"])
    assert report["ratio"] > 0 and report["batch"] == 8 and report["params"] > 0


def test_the_table_output(bench, capsys):
    assert (
        bench.main(
            [
                "--device",
                "cpu",
                "--batch",
                "4",
                "--steps",
                "1",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--width",
                "4",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "trainer" in out and "hand-written AMP" in out and "images/s" in out and "ratio" in out
