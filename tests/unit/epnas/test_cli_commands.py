"""One CLI framework: ``epnas train`` and ``epnas controller`` are the click commands of
``child_trainer`` and ``controller``, found through the ``epnas.commands`` entry points;
``python -m child_trainer`` and ``python -m controller`` run the same commands."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import click
import pytest
from click.testing import CliRunner

import epnas.cli as cli
from epnas.commands import ENTRY_POINT_GROUP, OneLineCommand, run_command

REPO = pathlib.Path(__file__).resolve().parents[3]
EPNAS = [str(pathlib.Path(sys.executable).with_name("epnas"))]  # the installed console script
ALIASES = {"train": [sys.executable, "-m", "child_trainer"], "controller": [sys.executable, "-m", "controller"]}
TRAINER_FLAGS = ("--arch", "--out", "--weights", "--dataset", "--epochs", "--device", "--termination-log", "--force")
CONTROLLER_FLAGS = (
    "--namespace",
    "--all-namespaces",
    "--metrics-port",
    "--kubeconfig",
    "--leader-elect / --no-leader-elect",
    "--default-parallelism",
    "--allowed-store",
)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120, env=env)


@pytest.mark.parametrize(("command", "flags"), [("train", TRAINER_FLAGS), ("controller", CONTROLLER_FLAGS)])
def test_epnas_help_of_train_and_controller_is_clicks_and_lists_their_options(command, flags) -> None:
    done = run([*EPNAS, command, "--help"])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(f"Usage: epnas {command} [OPTIONS]\n")
    options = done.stdout.split("\nOptions:\n", 1)[1]
    for flag in (*flags, "-h, --help"):
        assert re.search(rf"^  {re.escape(flag)}\b", options, re.M), flag


@pytest.mark.parametrize("command", ["train", "controller"])
def test_the_python_m_alias_prints_the_same_help_apart_from_the_program_name(command) -> None:
    alias = ALIASES[command]
    via_epnas = run([*EPNAS, command, "--help"])
    via_alias = run([*alias, "--help"])
    assert via_alias.returncode == 0 and via_alias.stdout.startswith(f"Usage: python -m {alias[-1]} [OPTIONS]\n")
    assert via_alias.stdout.replace(f"python -m {alias[-1]}", f"epnas {command}", 1) == via_epnas.stdout
    assert run([*alias, "-h"]).stdout == via_alias.stdout


@pytest.mark.parametrize("entry", ["epnas", "alias"])
@pytest.mark.parametrize(
    ("command", "argv", "flag"),
    [
        ("train", ["--arch", "a.json", "--out", "o", "--nope"], "--nope"),
        ("train", ["--arch", "a.json", "--out", "o", "--epochs", "many"], "--epochs"),
        ("train", ["--out", "o"], "--arch"),
        ("train", ["--arch", "a.json", "--out", "o", "--device", "tpu"], "--device"),
        ("controller", ["--nope"], "--nope"),
        ("controller", ["--metrics-port", "many"], "--metrics-port"),
        ("controller", ["--namespace", "a", "--all-namespaces"], "--all-namespaces"),
    ],
)
def test_a_bad_flag_exits_2_with_one_line_naming_it(entry, command, argv, flag, tmp_path) -> None:
    prefix = [*EPNAS, command] if entry == "epnas" else ALIASES[command]
    term = tmp_path / "term.json"
    done = run([*prefix, *argv], env={**os.environ, "EPNAS_TERMINATION_LOG": str(term)})
    line = "epnas-trainer: invalid input: bad flags: " if command == "train" else "epnas controller: "
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1 and done.stderr.startswith(line), done.stderr
    assert flag in done.stderr and "Usage" not in done.stderr and "Traceback" not in done.stderr
    if command == "train":  # the trainer's termination log says why, like for any other invalid input
        assert json.loads(term.read_text()) == {
            "exitCode": 2,
            "reason": "InvalidInput",
            "message": done.stderr.strip().removeprefix("epnas-trainer: invalid input: "),
        }


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["search", "examples/digits-quick.yaml", "--nope"], "--nope"),
        (["search", "examples/digits-quick.yaml", "--parallelism", "0"], "--parallelism"),
        (["status"], "TARGET"),
        (["export", "runs/x", "--format", "pickle"], "--format"),
        (["--nope"], "--nope"),
        (["nosuch"], "nosuch"),
    ],
)
def test_a_bad_flag_of_epnas_own_commands_is_one_line_too(argv, flag) -> None:
    done = run([*EPNAS, *argv])
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1 and done.stderr.startswith("epnas: "), done.stderr
    assert flag in done.stderr and "Usage" not in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- the entry points


def test_the_installed_entry_points_are_pyprojects() -> None:
    """A stale install (pyproject.toml edited, ``make install`` not rerun) would miss a command."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    stale = "the installed metadata is stale: rerun `make install` (and remove a leftover ./epnas.egg-info)"
    assert installed == declared, stale
    assert declared == {"train": "child_trainer.cli:train", "controller": "controller.main:controller"}


def test_epnas_loads_the_commands_only_when_asked_for() -> None:
    code = (
        "import sys, epnas.cli\n"
        "assert not {'child_trainer', 'controller'} & set(sys.modules), 'imported at start'\n"
        "names = epnas.cli.main.list_commands(None)\n"
        "assert not {'child_trainer', 'controller'} & set(sys.modules), 'imported to list names'\n"
        "assert epnas.cli.main.get_command(None, 'train').name == 'train'\n"
        "assert 'child_trainer' in sys.modules and 'controller' not in sys.modules\n"
        "print(' '.join(names))\n"
    )
    done = run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["controller", "export", "report", "search", "status", "train", "validate"]


def _group_with(monkeypatch, *entry_points: tuple[str, str]) -> click.Group:
    eps = [importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in entry_points]
    monkeypatch.setattr(cli, "_plugins", lambda: eps)
    group = cli.EpnasGroup(name="epnas")

    @group.command()
    def validate() -> None:
        click.echo("own validate")

    return group


def test_a_command_of_a_package_not_installed_is_no_command(monkeypatch) -> None:
    group = _group_with(monkeypatch, ("missing", "no_such_package_xyz.cli:command"))
    assert group.get_command(None, "missing") is None  # type: ignore[arg-type]
    done = CliRunner().invoke(group, ["missing"])
    assert done.exit_code == 2 and "No such command 'missing'" in done.output
    assert "missing" not in CliRunner().invoke(group, ["--help"]).output.split("Commands:")[1]


def test_a_broken_command_module_is_not_hidden(monkeypatch) -> None:
    group = _group_with(monkeypatch, ("broken", "epnas.no_such_module_xyz:command"))
    with pytest.raises(ModuleNotFoundError):
        group.get_command(None, "broken")  # type: ignore[arg-type]


def test_a_command_of_its_own_wins_over_an_entry_point(monkeypatch) -> None:
    group = _group_with(monkeypatch, ("validate", "child_trainer.cli:train"))
    done = CliRunner().invoke(group, ["validate"])
    assert done.exit_code == 0 and done.output == "own validate\n"


# ---------------------------------------------------------------- epnas.commands


def test_run_command_returns_the_exit_code_and_keeps_a_keyboard_interrupt(capsys) -> None:
    @click.command(cls=OneLineCommand)
    @click.option("--code", type=int, required=True)
    @click.pass_context
    def command(ctx: click.Context, code: int) -> None:
        if code < 0:
            raise KeyboardInterrupt
        ctx.exit(code)

    assert run_command(command, ["--code", "3"], "prog") == 3
    assert run_command(command, ["--help"], "prog") == 0 and capsys.readouterr().out.startswith("Usage: prog ")
    assert run_command(command, ["--code", "x"], "prog") == 2
    assert capsys.readouterr().err == "epnas: Invalid value for '--code': 'x' is not a valid integer.\n"
    with pytest.raises(KeyboardInterrupt):
        run_command(command, ["--code", "-1"], "prog")


def test_a_bad_trainer_value_after_termination_log_is_written_there(tmp_path, monkeypatch, capsys) -> None:
    from child_trainer.cli import main

    monkeypatch.delenv("EPNAS_TERMINATION_LOG", raising=False)
    term = tmp_path / "term.json"
    assert main(["--termination-log", str(term), "--arch", "a.json", "--out", "o", "--epochs", "many"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("epnas-trainer: invalid input: bad flags: Invalid value for '--epochs'")
    assert json.loads(term.read_text())["message"] == line.removeprefix("epnas-trainer: invalid input: ")
