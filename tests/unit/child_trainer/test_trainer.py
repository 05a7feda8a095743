"""The trainer entry point: valid children exit 0 with a result, invalid input exits 2 without one."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

import child_trainer.train
from child_trainer.cli import main, termination_message
from child_trainer.data import load_dataset
from child_trainer.train import lr_at, train_child
from epnas.arch import parse_arch
from epnas.build import build_model
from epnas.spec import ChildTraining, Dataset
from epnas.store import open_store
from epnas.task import load_result
from epnas.weights import merge

REPO = pathlib.Path(__file__).resolve().parents[3]
TINY = {"regime": "prediction", "epochs": 2, "batchSize": 64}
SYNTHETIC = {"kind": "synthetic", "options": {"samples": 120}}

ARCHS = {
    "image-layer": {
        "space": "image-layer",
        "layers": [
            {"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"},
            {"op": "maxpool", "src1": 1, "width": 2},
            {"op": "dep-sep-conv2d", "src1": 2, "src2": 1, "channels": 16, "width": 3, "activation": "swish"},
        ],
    },
    "image-module": {
        "space": "image-module",
        "cell": {
            "branches": [
                {"type": "conv-maxpool", "src1": 0, "src2": 0, "channels": 8, "width": 3},
                {"type": "1x7-7x1-none", "src1": 1, "channels": 8, "width": 1},
            ]
        },
        "stack": {"stem_channels": 8, "stages": 2, "cells_per_stage": 1},
    },
    "kws-layer": {
        "space": "kws-layer",
        "layers": [
            {
                "op": "conv2d",
                "src1": 0,
                "channels": 4,
                "width": 4,
                "freq_width": 4,
                "stride_time": 4,
                "stride_freq": 4,
                "activation": "relu",
            },
            {"op": "gru", "src1": 1, "channels": 12, "directions": 1},
            {"op": "fc", "src1": 2, "channels": 12, "activation": "relu"},
        ],
    },
}


def write_task(
    root: pathlib.Path, arch: dict, *, dataset=None, training=None, child="e000-s00-c00", weights=None
) -> pathlib.Path:
    child_dir = root / "search" / "children" / child
    child_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ChildTask",
        "search": "search",
        "child": child,
        "arch": arch,
        "dataset": dataset or SYNTHETIC,
        "training": training or TINY,
        "seed": 3,
    }
    if weights:
        doc["weights"] = weights
    (child_dir / "arch.json").write_text(json.dumps(doc))
    return child_dir


def argv_for(child_dir: pathlib.Path, *extra: str) -> list[str]:
    return ["--arch", (child_dir / "arch.json").as_uri(), "--out", child_dir.as_uri(), "--device", "cpu", *extra]


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "child_trainer", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "EPNAS_TRAINER_THREADS": "1", **(env or {})},
        timeout=300,
    )


@pytest.mark.parametrize("space", sorted(ARCHS))
def test_valid_child_in_every_space_writes_a_result(space, tmp_path, capsys):
    child_dir = write_task(tmp_path, ARCHS[space])
    assert main(argv_for(child_dir)) == 0
    result = load_result((child_dir / "result.json").read_text())
    assert result.epochs_run == 2 and len(result.history["val_acc"]) == 2
    splits = load_dataset(Dataset.model_validate(SYNTHETIC), space=space, seed=3)
    model = build_model(parse_arch(ARCHS[space]), splits.input_shape, splits.num_classes)
    assert 0 <= result.val_accuracy <= 1
    assert result.metrics["params"] == sum(p.numel() for p in model.parameters())  # torch's own count
    assert result.weights_key == "children/e000-s00-c00/weights.safetensors"
    assert (child_dir / "weights.safetensors").is_file()
    assert result.arch_hash == parse_arch(ARCHS[space]).hash


def test_subprocess_run_pulls_shared_weights_and_writes_termination_log(tmp_path):
    first = write_task(tmp_path, ARCHS["image-layer"], child="e000-s00-c00", weights="weights/")
    term = tmp_path / "termination-log"
    done = run_cli(argv_for(first, "--termination-log", str(term)))
    assert done.returncode == 0, done.stderr
    summary = json.loads(term.read_text())
    assert summary["exitCode"] == 0 and summary["child"] == "e000-s00-c00" and len(term.read_bytes()) <= 4096
    store = open_store((tmp_path / "search").as_uri())
    merge(store, "weights/", [("children/e000-s00-c00/weights.safetensors", summary["valAccuracy"], "e000-s00-c00")])
    second = write_task(tmp_path, ARCHS["image-layer"], child="e000-s01-c00", weights="weights/")
    assert main(argv_for(second)) == 0
    assert load_result((second / "result.json").read_text()).inherited_fraction == 1.0


def test_synthetic_data_is_learnable_and_training_is_deterministic():
    splits = load_dataset(
        Dataset.model_validate({"kind": "synthetic", "inputShape": [1, 8, 8], "options": {"samples": 300}}),
        space="image-layer",
        seed=0,
    )
    arch = parse_arch(ARCHS["image-layer"])
    training = ChildTraining(regime="standard", epochs=3, batch_size=32).resolved()
    outcomes = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(arch, splits.input_shape, splits.num_classes)
        outcomes.append(train_child(model, splits, training, seed=1, device=torch.device("cpu")))
    assert outcomes[0].val_accuracy > 0.3
    assert outcomes[0].history == outcomes[1].history


def test_lr_schedules():
    standard = ChildTraining(regime="standard").resolved()
    assert lr_at(standard, 0, 0, 10) == pytest.approx(0.05)
    assert lr_at(standard, 5, 50, 10) == pytest.approx(0.001 + 0.049 * 0.5)
    assert lr_at(standard, 10, 100, 10) == pytest.approx(0.05)  # restart after T0 = 10
    assert lr_at(standard, 20, 200, 10) == pytest.approx(0.001 + 0.049 * 0.5)  # half of T1 = 20
    prediction = ChildTraining(regime="prediction").resolved()
    assert lr_at(prediction, 0, 0, 2) == pytest.approx(0.05)  # warm-up starts at lr/10
    assert lr_at(prediction, 5, 10, 2) == pytest.approx(0.25)
    assert lr_at(prediction, 10, 20, 2) == pytest.approx(0.0)


def test_flags_override_regime_and_numbers(tmp_path, monkeypatch):
    """Each flag reaches the training that runs: the batches the model is trained on, the
    training samples it is given, the channels of the weights it writes."""
    seen: dict = {"batches": []}
    real_train_child = child_trainer.train.train_child

    def spying(model, splits, training, **kwargs):  # the real training, watched
        seen.update(training=training, train_samples=len(splits.train[0]))
        model.register_forward_pre_hook(
            lambda module, inputs: (
                seen["batches"].append(len(inputs[0])) if module.training and torch.is_grad_enabled() else None
            )
        )
        return real_train_child(model, splits, training, **kwargs)

    monkeypatch.setattr(child_trainer.train, "train_child", spying)
    child_dir = write_task(tmp_path, ARCHS["image-layer"], training={"regime": "prediction", "epochs": 5})
    assert (
        main(
            argv_for(
                child_dir,
                "--regime",
                "standard",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--sample-ratio",
                "0.5",
                "--channel-factor",
                "0.5",
            )
        )
        == 0
    )
    result = load_result((child_dir / "result.json").read_text())
    assert result.epochs_run == 1
    assert result.history["lr"][0] < 0.05
    assert seen["training"].regime == "standard" and seen["training"].batch_size == 32
    full = load_dataset(Dataset.model_validate(SYNTHETIC), space="image-layer", seed=3).train[0]
    assert seen["train_samples"] == math.ceil(len(full) * 0.5)
    batches = seen["batches"]
    assert batches and set(batches[:-1]) == {32} and batches[-1] <= 32, batches
    assert sum(batches) >= seen["train_samples"] - 1  # one epoch over the half (a last batch of 1 is skipped)
    weights = safetensors.torch.load_file(child_dir / "weights.safetensors")
    assert weights["body.0_conv2d.op.conv.weight"].shape[0] == 8  # 16 channels × 0.5
    assert weights["body.2_dep-sep-conv2d.op.pw.weight"].shape[0] == 8


def test_bare_architecture_with_dataset_flag(tmp_path):
    child_dir = tmp_path / "run" / "mychild"
    child_dir.mkdir(parents=True)
    (child_dir / "arch.json").write_text(json.dumps(ARCHS["image-layer"]))
    assert main(argv_for(child_dir, "--dataset", "synthetic", "--epochs", "1", "--batch-size", "64")) == 0
    assert load_result((child_dir / "result.json").read_text()).child == "mychild"


def test_termination_message_is_capped():
    text = termination_message({"exitCode": 1, "message": "x" * 10000})
    assert len(text.encode()) <= 4096 and json.loads(text)["exitCode"] == 1


# ---------------------------------------------------------------- invalid input → exit 2


def _npz(path: pathlib.Path, shape) -> pathlib.Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.normal(size=(40, *shape)).astype(np.float32),
        y_train=rng.integers(0, 3, 40),
        x_val=rng.normal(size=(10, *shape)).astype(np.float32),
        y_val=rng.integers(0, 3, 10),
    )
    return path


def _bad_json(tmp_path):
    child_dir = write_task(tmp_path, ARCHS["image-layer"])
    (child_dir / "arch.json").write_text("{not json")
    return child_dir, "not valid JSON"


def _unknown_op(tmp_path):
    arch = {
        "space": "image-layer",
        "layers": [{"op": "conv9", "src1": 0, "channels": 16, "width": 3, "activation": "relu"}],
    }
    return write_task(tmp_path, arch), "unknown op"


def _missing_dataset(tmp_path):
    return write_task(
        tmp_path,
        ARCHS["image-layer"],
        dataset={"kind": "npz", "uri": (tmp_path / "nope.npz").as_uri(), "inputShape": [1, 8, 8], "numClasses": 3},
    ), "not found"


def _wrong_input_shape(tmp_path):
    uri = _npz(tmp_path / "data.npz", (1, 6, 6)).as_uri()
    return write_task(
        tmp_path, ARCHS["image-layer"], dataset={"kind": "npz", "uri": uri, "inputShape": [1, 8, 8], "numClasses": 3}
    ), "input shape"


def _declared_shape_mismatch(tmp_path):
    return write_task(
        tmp_path, ARCHS["image-layer"], dataset={"kind": "digits", "inputShape": [3, 32, 32]}
    ), "input shape"


def _bad_flag(tmp_path):
    return write_task(tmp_path, ARCHS["image-layer"]), "bad flags"


INVALID = {
    "bad json": (_bad_json, []),
    "unknown op": (_unknown_op, []),
    "missing dataset": (_missing_dataset, []),
    "wrong input shape": (_wrong_input_shape, []),
    "declared shape mismatch": (_declared_shape_mismatch, []),
    "bad flag": (_bad_flag, ["--regime", "fastest"]),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_input_exits_2_with_one_line_and_no_result(case, tmp_path, capsys):
    make, extra = INVALID[case]
    child_dir, expected = make(tmp_path)
    code = main(argv_for(child_dir, *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("epnas-trainer: invalid input:") and expected in err
    assert not (child_dir / "result.json").exists()


def test_invalid_input_exits_2_in_a_subprocess(tmp_path):
    child_dir, _ = _unknown_op(tmp_path)
    term = tmp_path / "term.json"
    done = run_cli(argv_for(child_dir), env={"EPNAS_TERMINATION_LOG": str(term)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("epnas-trainer: invalid input: ")
    assert json.loads(term.read_text())["exitCode"] == 2
    assert not (child_dir / "result.json").exists()


def test_missing_arch_is_invalid_and_store_fault_is_1(tmp_path, capsys):
    assert main(["--arch", (tmp_path / "none" / "arch.json").as_uri(), "--out", tmp_path.as_uri()]) == 2
    child_dir = write_task(tmp_path, ARCHS["image-layer"])
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a directory must go")
    assert (
        main(["--arch", (child_dir / "arch.json").as_uri(), "--out", (blocker / "out").as_uri(), "--device", "cpu"])
        == 1
    )
    assert "epnas-trainer: store error" in capsys.readouterr().err


def test_unsupported_uri_scheme_is_invalid_input(tmp_path, capsys):
    assert main(["--arch", "gs://bucket/arch.json", "--out", tmp_path.as_uri()]) == 2
    assert "bad flags" in capsys.readouterr().err


@pytest.mark.parametrize("lr", ["1e3", "1e30"])
def test_a_diverging_child_exits_3_with_the_reason_and_writes_nothing(lr, tmp_path, capsys):
    """A non-finite loss is a failed child (exit 3, never retried), not a chance-level result;
    its NaN weights never reach the store, so they never reach the shared dictionary."""
    child_dir = write_task(tmp_path, ARCHS["image-layer"])
    term = tmp_path / "termination-log"
    code = main(argv_for(child_dir, "--lr", lr, "--termination-log", str(term)))
    err = capsys.readouterr().err.strip()
    assert code == 3, err
    assert err.startswith("epnas-trainer: diverged: ") and "training loss" in err and len(err.splitlines()) == 1
    assert json.loads(term.read_text())["reason"] == "Diverged"
    assert not (child_dir / "result.json").exists() and not (child_dir / "weights.safetensors").exists()
