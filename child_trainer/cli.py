"""``python -m child_trainer`` / ``epnas train``: one architecture in, one trained child out.

Steps: read ``arch.json`` (a ``ChildTask``, or a bare architecture plus flags) →
load the dataset → build the model → pull shared weights → train → evaluate →
push ``weights.safetensors`` → write ``result.json`` LAST → termination summary.

``train`` is the click command (``epnas train`` finds it through the ``epnas.commands`` entry
point; ``python -m child_trainer`` runs it through ``main``).

Exit codes (``epnas.errors``): 0 done; 2 invalid input (bad JSON, unknown op, missing
dataset, input shape mismatch, bad flags), one stderr line starting with
``epnas-trainer: invalid input:`` and no result written; 3 training diverged (a
non-finite loss), one line ``epnas-trainer: diverged: ...``, nothing written; 1 any
other fault.  2 and 3 are never retried.

``report_failure`` is the one place an exception becomes the exit code, its reason in the
termination log and its stderr line: an ``epnas.errors.EpnasError`` gives one line
``epnas-trainer: <reason in words>: <message>``; any other exception is a bug: its traceback,
then the line ``epnas-trainer: error: <type>: <message>`` (the last line is the failed child's
reason), exit 1.  Bad flags (click's usage errors) are ``InvalidInput`` reported the same way.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import traceback
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NoReturn

import click
from pydantic.alias_generators import to_camel

from epnas.arch import with_channel_factor
from epnas.commands import OneLineCommand, run_command
from epnas.errors import FAULT, Diverged, EpnasError, InvalidInput, SpecError, one_line
from epnas.store import StoreError, StoreNotFound, join_uri, open_store, split_uri
from epnas.task import CHILD_ID, ChildResult, ChildTask, load_task

PROG = "epnas-trainer"
PROG_NAME = "python -m child_trainer"
"""The program name in ``python -m child_trainer --help`` (``epnas train --help`` says ``epnas train``)."""
TERMINATION_LIMIT = 4096
RESULT_FILE = "result.json"
TERMINATION_ENV = "EPNAS_TERMINATION_LOG"


class TrainerCommand(OneLineCommand):
    """The trainer's click command: bad flags are ``InvalidInput`` (exit 2, one line
    ``epnas-trainer: invalid input: bad flags: …``, the summary written to ``--termination-log``
    when click read it before the bad flag (a bad value; an unknown flag stops click before it
    reads any), else to ``$EPNAS_TERMINATION_LOG``), like any other invalid input."""

    prog = PROG

    def bad_flags(self, ctx: click.Context, err: InvalidInput) -> NoReturn:
        summary: dict[str, Any] = {"exitCode": FAULT}
        code = report_failure(InvalidInput(f"bad flags: {err}"), summary)
        log_path = ctx.params.get("termination_log") or os.environ.get(TERMINATION_ENV)
        if log_path:
            write_termination_log(log_path, summary)
        ctx.exit(code)


@click.command(name="train", cls=TrainerCommand)
@click.option("--arch", required=True, help="URI of the child's arch.json (a ChildTask or a bare architecture)")
@click.option("--out", required=True, help="URI of the child's directory: weights.safetensors and result.json go here")
@click.option(
    "--weights",
    help="URI of the shared weight dictionary (read only); default: the task's 'weights' under the search root",
)
@click.option(
    "--dataset", type=click.Choice(("digits", "cifar10", "npz", "synthetic")), help="override the task's dataset kind"
)
@click.option("--dataset-uri", help="directory or URI of the dataset (cifar10, npz)")
@click.option("--regime", type=click.Choice(("standard", "prediction")), help="override the training regime")
@click.option("--epochs", type=int, help="override the number of epochs")
@click.option("--batch-size", type=int, help="override the batch size")
@click.option("--lr", type=float, help="override the initial learning rate")
@click.option("--lr-min", type=float, help="override the final learning rate")
@click.option("--channel-factor", type=float, help="EcoNAS proxy: channels × factor")
@click.option("--resolution", type=int, help="EcoNAS proxy: inputs resized to this height and width")
@click.option("--sample-ratio", type=float, help="EcoNAS proxy: fraction of the training samples")
@click.option("--seed", type=int, help="override the task's seed")
@click.option("--patience", type=int, help="stop after this many epochs without a validation gain (default: never)")
@click.option("--no-sharing", is_flag=True, help="do not pull shared weights")
@click.option(
    "--device",
    type=click.Choice(("cpu", "cuda", "auto")),
    default="auto",
    show_default=True,
    help="where to train (auto: CUDA when available)",
)
@click.option("--endpoint", help="S3 endpoint URL (default: env EPNAS_S3_ENDPOINT)")
@click.option("--termination-log", help="write a short JSON summary here (default: env EPNAS_TERMINATION_LOG)")
@click.option("--force", is_flag=True, help="train even when the output already holds a result for this architecture")
@click.pass_context
def train(ctx: click.Context, **flags: Any) -> None:
    """Train one EPNAS child and write its result to the store."""
    ctx.exit(execute(SimpleNamespace(**flags)))


TRAINING_FLAGS = ("regime", "epochs", "batch_size", "lr", "lr_min", "channel_factor", "resolution", "sample_ratio")
REGIME_NUMBERS = ("epochs", "batch_size", "lr", "lr_min")


@dataclass
class Job:
    task: ChildTask
    out_uri: str
    weights_uri: str | None
    device: str
    patience: int | None
    endpoint: str | None


def main(argv: list[str] | None = None) -> int:
    """Run the trainer with ``argv`` (default ``sys.argv[1:]``) as ``python -m child_trainer``;
    return the exit code (``--help``: 0)."""
    return run_command(train, argv, PROG_NAME)


def execute(args: SimpleNamespace) -> int:
    """Train the child ``args`` (the parsed flags) describe; return the exit code.  Whatever
    happens, the termination log (``--termination-log``, else ``$EPNAS_TERMINATION_LOG``) gets
    the summary."""
    log_path = args.termination_log or os.environ.get(TERMINATION_ENV)
    summary: dict[str, Any] = {"exitCode": FAULT}
    try:
        job = prepare(args)
        summary["child"] = job.task.child
        if not args.force and _already_done(job):
            summary.update(exitCode=0, message="result already present")
            print(f"{PROG}: {job.task.child}: result already present, nothing to do", file=sys.stderr)
            return 0
        result = run(job)
        summary.update(exitCode=0, **_summary_of(result))
        print(
            f"{PROG}: {result.child}: val {result.val_accuracy:.4f} test {result.test_accuracy:.4f} "
            f"after {result.epochs_run} epochs in {result.train_seconds:.1f} s on {result.device}",
            file=sys.stderr,
        )
        return 0
    except Exception as err:
        return report_failure(err, summary)
    finally:
        if log_path:
            write_termination_log(log_path, summary)


def report_failure(err: Exception, summary: dict[str, Any]) -> int:
    """The one place an exception becomes the trainer's exit code, its stderr line(s) and the
    ``exitCode``, ``reason`` and ``message`` of ``summary`` (updated in place); returns the code.

    An ``EpnasError`` is one line ``epnas-trainer: <reason in words>: <message>``; anything else
    is a bug or an unforeseen fault (the Job's backoff retries it): its traceback, then the line
    ``epnas-trainer: error: <type>: <message>``, exit 1."""
    if isinstance(err, EpnasError):
        message = one_line(str(err))
        summary.update(exitCode=err.exit_code, reason=err.reason, message=message)
        print(f"{PROG}: {reason_words(err.reason)}: {message}", file=sys.stderr)
        return err.exit_code
    message = one_line(f"{type(err).__name__}: {err}")
    summary.update(exitCode=FAULT, reason="Fault", message=message)
    traceback.print_exception(err, file=sys.stderr)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return FAULT


def reason_words(reason: str) -> str:
    """An error's ``reason`` as the words of the trainer's stderr line: ``InvalidInput`` → ``invalid input``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", reason).lower()


# ---------------------------------------------------------------- decode


def prepare(args: SimpleNamespace) -> Job:
    """Read and validate everything; raise ``InvalidInput`` for anything the input gets wrong."""
    for flag in ("arch", "out", "weights", "dataset_uri"):
        value = getattr(args, flag)
        if value is not None and "://" in value and not value.startswith(("file://", "s3://")):
            raise InvalidInput(f"bad flags: --{flag.replace('_', '-')} must be file://, s3:// or a path")
    if args.endpoint is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", args.endpoint):
        raise InvalidInput(f"bad flags: --endpoint {args.endpoint!r} is not an http:// or https:// URL")
    if args.weights and args.weights.startswith("file://") and pathlib.Path(args.weights[len("file://") :]).is_file():
        raise InvalidInput(
            f"bad flags: --weights {args.weights} is a file; it names the weight dictionary's directory (weights/)"
        )
    try:
        root, key = split_uri(args.arch)
    except StoreError as err:
        raise InvalidInput(f"bad flags: --arch: {err}") from None
    try:
        raw = open_store(root, endpoint=args.endpoint).get_bytes(key)
    except StoreNotFound:
        raise InvalidInput(f"arch.json not found: {args.arch}") from None
    task = _task_from(raw, args)
    weights_uri = None
    if not args.no_sharing and task.training.parameter_sharing:
        weights_uri = args.weights or _default_weights_uri(args.arch, task)
    return Job(task, args.out.rstrip("/"), weights_uri, args.device, args.patience, args.endpoint)


def _task_from(raw: bytes, args: SimpleNamespace) -> ChildTask:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{args.arch}: not valid JSON: {err}") from None
    if isinstance(data, dict) and "space" in data and "arch" not in data:
        data = {"search": "local", "child": _child_id(args.out), "arch": data}
    if isinstance(data, dict):
        data = _with_overrides(data, args)
    try:
        task = load_task(data)
    except SpecError as err:
        raise InvalidInput(f"{args.arch}: {err}") from None
    return task.model_copy(update={"training": task.training.resolved()})


def _with_overrides(data: dict, args: SimpleNamespace) -> dict:
    data = dict(data)
    training = dict(data.get("training") or {})
    if args.regime is not None and args.regime != training.get("regime"):
        for name in REGIME_NUMBERS:  # the new regime's defaults, unless a flag sets the number
            if getattr(args, name) is None:
                training.pop(name, None)
                training.pop(to_camel(name), None)
    for name in TRAINING_FLAGS:
        value = getattr(args, name)
        if value is not None:
            training.pop(to_camel(name), None)
            training[name] = value
    data["training"] = training
    if args.dataset is not None or args.dataset_uri is not None:
        dataset = dict(data.get("dataset") or {})
        if args.dataset is not None and dataset.get("kind") != args.dataset:
            dataset = {"kind": args.dataset}
        if args.dataset_uri is not None:
            dataset["uri"] = args.dataset_uri
        data["dataset"] = dataset
    if args.seed is not None:
        data["seed"] = args.seed
    return data


def _child_id(out_uri: str) -> str:
    name = out_uri.rstrip("/").rpartition("/")[2]
    return name if re.match(CHILD_ID, name) else "child"


def _default_weights_uri(arch_uri: str, task: ChildTask) -> str | None:
    """``<search root>/<task.weights>`` when ``arch_uri`` is ``<search root>/children/<child>/arch.json``."""
    if not task.weights:
        return None
    child_dir = split_uri(arch_uri)[0]
    children, _, _ = child_dir.rstrip("/").rpartition("/")
    search_root, _, last = children.rpartition("/")
    if last != "children":
        return None
    return join_uri(search_root, task.weights.strip("/"))


def _already_done(job: Job) -> bool:
    store = open_store(job.out_uri, endpoint=job.endpoint)
    if not store.exists(RESULT_FILE):
        return False
    try:
        return store.get_json(RESULT_FILE).get("archHash") == job.task.arch.hash
    except (StoreError, AttributeError):
        return False


# ---------------------------------------------------------------- run


def run(job: Job) -> ChildResult:
    """Train the child and write its weights, then its result (last); return the result."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:  # restore the process-wide settings: main() also runs in-process (epnas train, tests)
        return _run(job)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _run(job: Job) -> ChildResult:
    import torch

    from child_trainer.data import load_dataset
    from child_trainer.train import train_child
    from epnas.build import build_model
    from epnas.metrics import compute_metrics
    from epnas.weights import pull, push_child

    task, training = job.task, job.task.training
    device = _device(job.device)
    _set_threads(torch)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    splits = load_dataset(
        task.dataset,
        space=task.arch.space,
        seed=task.seed,
        resolution=training.resolution,
        sample_ratio=training.sample_ratio,
    )
    arch = with_channel_factor(task.arch, training.channel_factor)
    torch.manual_seed(task.seed)
    model = build_model(arch, splits.input_shape, splits.num_classes)
    _check_fits(model, splits, torch)
    warnings: list[str] = []
    inherited = 0.0
    if job.weights_uri:
        report = pull(open_store(job.weights_uri, endpoint=job.endpoint), "", model)
        warnings += report.warnings
        inherited = report.fraction
    model.to(device)
    outcome = train_child(
        model,
        splits,
        training,
        seed=task.seed,
        device=device,
        patience=job.patience,
        deadline_s=float(training.timeout_seconds),
    )
    if outcome.diverged:
        raise Diverged(outcome.diverged)
    out = open_store(job.out_uri, endpoint=job.endpoint)
    model.to("cpu")
    weights_key = push_child(
        out,
        "",
        model,
        metadata={"child": task.child, "arch_hash": task.arch.hash, "val_accuracy": repr(outcome.val_accuracy)},
    )
    result = ChildResult(
        child=task.child,
        arch_hash=task.arch.hash,
        val_accuracy=outcome.val_accuracy,
        test_accuracy=outcome.test_accuracy,
        history=outcome.history,
        metrics=compute_metrics(arch, splits.input_shape, splits.num_classes).as_dict(),
        train_seconds=round(outcome.seconds, 3),
        epochs_run=outcome.epochs_run,
        inherited_fraction=inherited,
        device=str(device),
        precision=outcome.precision,
        channels_last=outcome.channels_last,
        compiled=outcome.compiled,
        warnings=warnings + outcome.warnings,
        weights_key=f"{task.out_dir or 'children/' + task.child}/{weights_key}",
        weights_uri=join_uri(job.out_uri, weights_key),
    )
    out.put_bytes(RESULT_FILE, result.to_json().encode())
    return result


def _device(choice: str):
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but CUDA is not available on this node")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def _set_threads(torch) -> None:
    raw = os.environ.get("EPNAS_TRAINER_THREADS", "1")
    try:
        threads = int(raw)
    except ValueError:
        raise InvalidInput(f"EPNAS_TRAINER_THREADS must be a positive integer, got {raw!r}") from None
    if threads < 1:
        raise InvalidInput(f"EPNAS_TRAINER_THREADS must be a positive integer, got {raw!r}")
    torch.set_num_threads(threads)


def _check_fits(model, splits, torch) -> None:
    """One eval-mode forward pass on two samples: an architecture that cannot read this input is invalid input."""
    model.eval()
    try:
        with torch.no_grad():
            logits = model(splits.val[0][:2])
    except RuntimeError as err:
        raise InvalidInput(
            f"the architecture does not fit input shape {list(splits.input_shape)}: {one_line(str(err))}"
        ) from None
    if logits.shape[-1] != splits.num_classes:
        raise InvalidInput(f"the model writes {logits.shape[-1]} logits for {splits.num_classes} classes")


# ---------------------------------------------------------------- termination log


def _summary_of(result: ChildResult) -> dict[str, Any]:
    return {
        "valAccuracy": result.val_accuracy,
        "testAccuracy": result.test_accuracy,
        "epochsRun": result.epochs_run,
        "trainSeconds": result.train_seconds,
        "inheritedFraction": round(result.inherited_fraction, 4),
        "device": result.device,
        "archHash": result.arch_hash,
        "warnings": len(result.warnings),
    }


def termination_message(summary: dict[str, Any]) -> str:
    """``summary`` as compact JSON of at most ``TERMINATION_LIMIT`` bytes (the message is cut to fit)."""
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"))
    while len(text.encode()) > TERMINATION_LIMIT and summary.get("message"):
        summary = {
            **summary,
            "message": summary["message"][
                : max(0, len(summary["message"]) - (len(text.encode()) - TERMINATION_LIMIT) - 8)
            ]
            + "…",
        }
        if len(summary["message"]) <= 1:
            summary.pop("message")
        text = json.dumps(summary, sort_keys=True, separators=(",", ":"))
    return text[:TERMINATION_LIMIT]


def write_termination_log(path: str, summary: dict[str, Any]) -> None:
    """Best effort: the full result is in the store; a failure here must not change the exit code."""
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(termination_message(summary))
    except OSError:
        pass


__all__ = ["main", "train", "InvalidInput", "termination_message"]
