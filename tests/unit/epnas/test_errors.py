"""The error family (``epnas.errors``): every ``EpnasError`` carries its exit code, and each
entry point (``epnas``, the trainer, the controller) turns one into its lines on stderr and that
code without a traceback, while any other exception keeps its traceback."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

import child_trainer.cli as trainer_cli
import controller.main as controller_main
import epnas.export  # noqa: F401  (defines ExportError)
import epnas.report  # noqa: F401  (defines ReportError)
from epnas.cli import EpnasGroup
from epnas.errors import (
    DIVERGED,
    FAULT,
    INVALID_INPUT,
    CorruptState,
    DatasetError,
    Diverged,
    EpnasError,
    InvalidInput,
    Problem,
    SpecError,
    message_lines,
    one_line,
)
from epnas.export import ExportError
from epnas.report import ReportError
from epnas.store import StoreDecodeError, StoreError, StoreNotFound, StoreURIError

REPO = pathlib.Path(__file__).resolve().parents[3]

EXIT_CODES = {
    EpnasError: FAULT,
    InvalidInput: INVALID_INPUT,
    SpecError: INVALID_INPUT,
    DatasetError: INVALID_INPUT,
    StoreURIError: INVALID_INPUT,
    StoreError: FAULT,
    StoreNotFound: FAULT,
    StoreDecodeError: FAULT,
    CorruptState: FAULT,
    ExportError: FAULT,
    ReportError: FAULT,
    Diverged: DIVERGED,
}


def family(root: type) -> set[type]:
    return {root} | {c for sub in root.__subclasses__() for c in family(sub)}


def make(cls: type[EpnasError], message: str = "state/checkpoint.json is damaged") -> EpnasError:
    return cls([Problem("spec.seed", message)]) if cls is SpecError else cls(message)


def test_the_table_names_every_error_of_the_family() -> None:
    assert family(EpnasError) == set(EXIT_CODES)


@pytest.mark.parametrize("cls", list(EXIT_CODES), ids=lambda c: c.__name__)
def test_every_error_carries_its_exit_code(cls) -> None:
    assert cls.exit_code == EXIT_CODES[cls]
    assert make(cls).exit_code == EXIT_CODES[cls]
    assert isinstance(cls.reason, str) and re.fullmatch(r"[A-Z][A-Za-z]+", cls.reason)


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (SpecError, ValueError),
        (DatasetError, ValueError),
        (StoreError, RuntimeError),
        (CorruptState, RuntimeError),
        (ExportError, RuntimeError),
        (ReportError, RuntimeError),
    ],
    ids=lambda c: c.__name__,
)
def test_the_errors_from_before_the_family_keep_their_builtin_base(cls, builtin) -> None:
    assert issubclass(cls, builtin) and issubclass(cls, EpnasError)


def test_invalid_input_is_exactly_one_definition() -> None:
    sources = [p for d in ("epnas", "child_trainer", "controller") for p in (REPO / d).rglob("*.py")]
    defining = [p for p in sources if re.search(r"^\s*INVALID_INPUT\s*[:=]", p.read_text(), re.M)]
    assert defining == [REPO / "epnas" / "errors.py"]


def test_message_lines() -> None:
    problems = [Problem("spec.seed", "too big"), Problem("", "not a mapping")]
    assert message_lines(SpecError(problems, heading="s.yaml is not valid (2 problems):"), "epnas") == [
        "epnas: s.yaml is not valid (2 problems):",
        "  spec.seed: too big",
        "  not a mapping",
    ]
    assert message_lines(SpecError(problems), "epnas") == ["epnas: spec.seed: too big", "not a mapping"]
    assert message_lines(CorruptState("a\n  b\n"), "epnas export") == ["epnas export: a; b"]
    assert one_line("") == "unknown error"


# ---------------------------------------------------------------- epnas


def group_raising(err: BaseException) -> click.Group:
    group = EpnasGroup(name="epnas")

    @group.command()
    def boom() -> None:
        raise err

    @group.command()
    def export() -> None:
        raise err

    return group


@pytest.mark.parametrize("cls", list(EXIT_CODES), ids=lambda c: c.__name__)
def test_the_cli_handler_prints_an_epnas_error_and_exits_with_its_code(cls) -> None:
    done = CliRunner().invoke(group_raising(make(cls)), ["boom"])
    assert done.exit_code == EXIT_CODES[cls], done.output
    field = "spec.seed: " if cls is SpecError else ""
    assert done.output == f"epnas: {field}state/checkpoint.json is damaged\n"
    assert CliRunner().invoke(group_raising(make(cls)), ["export"]).output.startswith("epnas export: ")


def test_the_cli_handler_lets_an_unexpected_exception_through() -> None:
    done = CliRunner().invoke(group_raising(KeyError("oops")), ["boom"])
    assert done.exit_code == 1 and isinstance(done.exception, KeyError)


def epnas_with_read_search_raising(expression: str, argv: list[str]) -> subprocess.CompletedProcess:
    """The real ``epnas`` entry point in a subprocess, its ``read_search`` replaced by one that raises."""
    code = (
        "import sys, epnas.cli as cli\n"
        "from epnas.errors import CorruptState\n"
        f"def boom(path):\n    raise {expression}\n"
        "cli.read_search = boom\n"
        f"sys.argv = ['epnas', *{argv!r}]\n"
        "cli.main()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_the_real_epnas_prints_no_traceback_for_an_epnas_error() -> None:
    done = epnas_with_read_search_raising(
        "CorruptState('state/checkpoint.json is damaged (no episode)')", ["validate", "x.yaml"]
    )
    assert done.returncode == 1 and done.stderr == "epnas: state/checkpoint.json is damaged (no episode)\n", done.stderr


def test_the_real_epnas_prints_a_traceback_for_an_unexpected_exception() -> None:
    done = epnas_with_read_search_raising("ZeroDivisionError('a bug')", ["validate", "x.yaml"])
    assert (
        done.returncode == 1
        and "Traceback (most recent call last)" in done.stderr
        and "ZeroDivisionError: a bug" in done.stderr
    )


# ---------------------------------------------------------------- the trainer


@pytest.mark.parametrize(
    "err, code, line",
    [
        (InvalidInput("bad flags: --epochs 0"), 2, "epnas-trainer: invalid input: bad flags: --epochs 0"),
        (
            DatasetError("npz dataset x.npz lacks y_val"),
            2,
            "epnas-trainer: invalid input: npz dataset x.npz lacks y_val",
        ),
        (
            StoreError("s3://b/x/result.json: AccessDenied (HTTP 403)"),
            1,
            "epnas-trainer: store error: s3://b/x/result.json: AccessDenied (HTTP 403)",
        ),
        (
            CorruptState("weights/index.json is damaged"),
            1,
            "epnas-trainer: corrupt state: weights/index.json is damaged",
        ),
        (Diverged("training loss nan at epoch 1"), 3, "epnas-trainer: diverged: training loss nan at epoch 1"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_the_trainer_reports_an_epnas_error_on_one_line(err, code, line, monkeypatch, capsys, tmp_path) -> None:
    def prepare(args):
        raise err

    monkeypatch.setattr(trainer_cli, "prepare", prepare)
    term = tmp_path / "term.json"
    assert trainer_cli.main(["--arch", "a.json", "--out", "out", "--termination-log", str(term)]) == code
    assert capsys.readouterr().err.splitlines() == [line]
    assert json.loads(term.read_text()) == {"exitCode": code, "reason": err.reason, "message": line.split(": ", 2)[2]}


def test_the_trainer_prints_a_traceback_for_an_unexpected_exception(monkeypatch, capsys, tmp_path) -> None:
    def prepare(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(trainer_cli, "prepare", prepare)
    term = tmp_path / "term.json"
    assert trainer_cli.main(["--arch", "a.json", "--out", "out", "--termination-log", str(term)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == "epnas-trainer: error: ZeroDivisionError: a bug"  # the failed child's reason
    assert json.loads(term.read_text())["reason"] == "Fault"


def test_reason_words() -> None:
    assert [trainer_cli.reason_words(r) for r in ("InvalidInput", "StoreError", "Diverged")] == [
        "invalid input",
        "store error",
        "diverged",
    ]


# ---------------------------------------------------------------- the controller


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["--trainer-defaults", "[]"],
            "epnas controller: --trainer-defaults: must be a JSON object of spec.trainer fields",
        ),
        (["--trainer-defaults", "{"], "epnas controller: --trainer-defaults: not JSON:"),
        (
            ["--trainer-defaults", '{"cpu": "lots"}'],
            "epnas controller: --trainer-defaults: cpu: String should match pattern",
        ),
        (
            ["--lease-duration", "1", "--renew-deadline", "2"],
            "epnas controller: --lease-duration / --renew-deadline / --retry-period: leader election needs 0 < retry period",
        ),
    ],
)
def test_the_controller_reports_bad_flags_on_one_line_and_exits_2(argv, line, capsys) -> None:
    assert controller_main.main(argv) == INVALID_INPUT
    out = capsys.readouterr()
    assert len(out.err.splitlines()) == 1 and out.err.startswith(line), out.err
    assert "Traceback" not in out.err + out.out


def test_the_controller_lets_an_unexpected_exception_through(monkeypatch) -> None:
    def metrics():
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(controller_main, "ControllerMetrics", metrics)
    with pytest.raises(ZeroDivisionError):
        controller_main.main(["--trainer-defaults", "{}"])
