"""What `epnas search` prints while it runs and when it ends: labels that say what they show."""

from __future__ import annotations

import pathlib

import pytest
from click.testing import CliRunner

from epnas.cli import main, print_summary, progress_line
from epnas.search import StepReport

TINY_SEARCH = (pathlib.Path(__file__).parents[2] / "integration" / "searches" / "tiny-synthetic.yaml").read_text()


def summary(best_feasible: dict | None, phase: str = "Running", episode: int = 0, step: int = 2) -> dict:
    best = {
        "child": "e000-s00-c01",
        "hash": "h",
        "valAccuracy": 0.91,
        "testAccuracy": 0.9,
        "reward": 0.62,
        "feasible": False,
        "metrics": {"params": 30000, "size_bytes": 120000, "flops": 10, "compute_intensity": 1.0},
        "arch": {"space": "image-layer", "layers": []},
    }
    return {
        "search": "s",
        "phase": phase,
        "episode": episode,
        "step": step,
        "episodes": 3,
        "stepsPerEpisode": 3,
        "children": {"total": 8, "succeeded": 8, "cached": 0, "failed": 0, "trained": 8},
        "feasibleCount": 0 if best_feasible is None else 1,
        "best": best,
        "bestFeasible": best_feasible,
        "store": "file:///x",
    }


def test_progress_names_the_best_feasible_child_or_says_there_is_none() -> None:
    none_yet = progress_line(StepReport(0, 1, [], summary(None)))
    assert none_yet == "episode 1/3 step 2/3  no feasible child yet; best (infeasible) reward 0.620"
    feasible = {**summary(None)["best"], "valAccuracy": 0.8, "feasible": True}
    assert (
        progress_line(StepReport(1, 0, [], summary(feasible)))
        == "episode 2/3 step 1/3  best feasible acc 0.800  feasible 1"
    )


def test_a_finished_search_reads_as_finished(capsys) -> None:
    print_summary(summary(None, phase="Succeeded", episode=3, step=0))
    out = capsys.readouterr().out
    assert "Succeeded, finished after 3 episodes" in out and "step 0/3" not in out
    assert "No feasible architecture yet." in out and "Best (infeasible) so far:" in out
    print_summary(summary(None, phase="Running", episode=1, step=2))
    assert "episode 2/3 (2 of 3 steps done)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command, words",
    [
        ('"unclosed', "No closing quotation"),
        ("no-such-trainer-xyz --flag", "'no-such-trainer-xyz' is not an executable program"),
        ("   ", "--trainer-command is empty"),
    ],
)
def test_a_bad_trainer_command_exits_2_before_anything_is_written(tmp_path, command, words) -> None:
    search = tmp_path / "s.yaml"
    search.write_text(TINY_SEARCH)
    done = CliRunner().invoke(
        main, ["search", str(search), "--store", (tmp_path / "store").as_uri(), "--quiet", "--trainer-command", command]
    )
    assert done.exit_code == 2 and words in done.output, done.output
    assert not (tmp_path / "store").exists()
