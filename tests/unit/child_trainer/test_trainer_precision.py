"""The fast-trainer options: precision (auto, fp32, bf16, fp16), channels_last, data placement, torch.compile.

CPU is the only device here: auto must mean fp32 there and leave training bit for bit
as the trainer was before these options (checked against a copy of that loop), bf16
and fp16 asked for explicitly must train under CPU autocast, channels_last must reach
the convolutions, and compile must run or fall back with a warning.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from child_trainer import train as trainer
from child_trainer.data import Splits, load_dataset
from child_trainer.train import (
    TrainStep,
    lr_at,
    place_splits,
    recalibrate_batchnorm,
    resolve_precision,
    train_child,
    uses_conv2d,
)
from epnas.arch import parse_arch
from epnas.build import build_model
from epnas.errors import SpecError
from epnas.spec import ChildTraining, Dataset
from epnas.task import load_task

CPU = torch.device("cpu")
ARCH = {
    "space": "image-layer",
    "layers": [
        {"op": "conv2d", "src1": 0, "channels": 8, "width": 3, "activation": "relu"},
        {"op": "maxpool", "src1": 1, "width": 2},
        {"op": "dep-sep-conv2d", "src1": 2, "src2": 1, "channels": 8, "width": 3, "activation": "swish"},
    ],
}
TINY = {
    "space": "image-layer",
    "layers": [{"op": "conv2d", "src1": 0, "channels": 4, "width": 3, "activation": "relu"}],
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as child_trainer.cli does on CPU
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def digits() -> Splits:
    splits = load_dataset(Dataset(kind="digits"), space="image-layer", seed=0, sample_ratio=0.5)
    return Splits(
        splits.train, (splits.val[0][:150], splits.val[1][:150]), splits.test, splits.input_shape, splits.num_classes
    )


def _model(splits: Splits, arch: dict = ARCH, seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(parse_arch(arch), splits.input_shape, splits.num_classes)


def _training(**kw) -> ChildTraining:
    return ChildTraining(**{"regime": "standard", "epochs": 2, "batch_size": 64, **kw}).resolved()


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


# ---------------------------------------------------------------- the spec


def test_spec_defaults_and_the_task_carries_the_options():
    assert ChildTraining().precision == "auto" and ChildTraining().compile is False
    task = load_task(
        {"search": "s", "child": "e000-s00-c00", "arch": ARCH, "training": {"precision": "bf16", "compile": True}}
    )
    assert task.training.precision == "bf16" and task.training.compile is True
    again = load_task(task.to_json())
    assert again.training == task.training
    assert json.loads(task.to_json())["training"]["precision"] == "bf16"
    with pytest.raises(SpecError, match="precision"):
        load_task({"search": "s", "child": "c", "arch": ARCH, "training": {"precision": "fp8"}})


# ---------------------------------------------------------------- precision


def test_auto_precision_is_fp32_on_cpu():
    precision, warning = resolve_precision("auto", CPU)
    assert (precision.name, precision.dtype, warning) == ("fp32", torch.float32, None)
    assert precision.scaler() is None
    with precision.autocast():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(
    "bf16, choice, expected, warns",
    [
        (True, "auto", "bf16", False),
        (False, "auto", "fp16", False),
        (False, "bf16", "fp16", True),
        (True, "fp16", "fp16", False),
        (True, "fp32", "fp32", False),
    ],
)
def test_precision_on_a_cuda_device(monkeypatch, bf16, choice, expected, warns):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    precision, warning = resolve_precision(choice, torch.device("cuda"))
    assert precision.name == expected and precision.device_type == "cuda"
    assert (warning is not None) == warns


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize("choice, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_on_cpu_runs_under_autocast_and_trains(digits, choice, dtype):
    model = _model(digits)
    seen: list[torch.dtype] = []
    _first_conv(model).register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    outcome = train_child(model, digits, _training(precision=choice), seed=0, device=CPU)
    assert outcome.precision == choice and outcome.diverged is None and not outcome.warnings
    assert seen and set(seen) == {dtype}  # training, recalibration and evaluation all under autocast
    losses = outcome.history["train_loss"]
    assert losses[-1] < losses[0] and losses[-1] < math.log(10)
    assert outcome.val_accuracy > 0.3  # chance is 0.1
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 master weights


def test_fp16_uses_a_grad_scaler_and_bf16_does_not():
    bf16, _ = resolve_precision("bf16", CPU)
    fp16, _ = resolve_precision("fp16", CPU)
    assert bf16.scaler() is None
    assert isinstance(fp16.scaler(), torch.amp.GradScaler)


# ---------------------------------------------------------------- the CPU path is what it was


def _old_augment(x, generator):
    """child_trainer.data.augment_images before it learned to move its draws to the batch's device."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 8)
    x = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    x = x.gather(3, cols)
    brightness = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.5
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + brightness


def _old_evaluate(model, pair):
    x, y = pair
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), trainer.EVAL_BATCH):
            logits = model(x[start : start + trainer.EVAL_BATCH])
            loss_sum += F.cross_entropy(logits, y[start : start + trainer.EVAL_BATCH], reduction="sum").item()
            correct += (logits.argmax(1) == y[start : start + trainer.EVAL_BATCH]).sum().item()
    return loss_sum / len(x), correct / len(x)


def _old_train(model, splits, training, seed, augment):
    """The training loop of child_trainer.train.train_child before precision, channels_last and compile (no stops)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=training.lr,
        momentum=training.momentum,
        nesterov=training.momentum > 0,
        weight_decay=training.weight_decay,
    )
    x_train, y_train = splits.train
    batch = min(training.batch_size, len(x_train))
    steps_per_epoch = max(1, len(x_train) // batch if len(x_train) % batch < 2 else -(-len(x_train) // batch))
    history = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}
    steps_done = 0
    for epoch in range(training.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            if len(idx) < 2:
                continue
            xb, yb = x_train[idx], y_train[idx]
            if augment:
                xb = _old_augment(xb, generator)
            rate = lr_at(training, epoch + step / steps_per_epoch, steps_done, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = rate
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), trainer.CLIP_NORM)
            optimizer.step()
            steps_done += 1
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
        recalibrate_batchnorm(model, x_train, batch, CPU)
        val_loss, val_acc = _old_evaluate(model, splits.val)
        for key, value in (
            ("train_loss", loss_sum / seen),
            ("train_acc", correct / seen),
            ("val_loss", val_loss),
            ("val_acc", val_acc),
            ("lr", rate),
        ):
            history[key].append(float(value))
    return history, _old_evaluate(model, splits.val)[1], _old_evaluate(model, splits.test)[1]


@pytest.mark.parametrize("regime, augment", [("prediction", False), ("standard", True)])
def test_cpu_training_is_bit_identical_to_the_trainer_before_the_options(digits, regime, augment):
    """auto on CPU is fp32 with nothing else changed: the same seed gives the very same weights and history."""
    from child_trainer.data import augment_images

    training = ChildTraining(regime=regime, epochs=2, batch_size=100).resolved()
    splits = Splits(
        digits.train,
        digits.val,
        digits.test,
        digits.input_shape,
        digits.num_classes,
        augment_images if augment else None,
    )
    new_model, old_model = _model(digits), _model(digits)
    outcome = train_child(new_model, splits, training, seed=7, device=CPU)
    history, val_acc, test_acc = _old_train(old_model, splits, training, 7, augment)
    assert (outcome.precision, outcome.channels_last, outcome.compiled, outcome.resident) == (
        "fp32",
        False,
        False,
        True,
    )
    assert outcome.history == history
    assert (outcome.val_accuracy, outcome.test_accuracy) == (val_acc, test_acc)
    new_state, old_state = new_model.state_dict(), old_model.state_dict()
    assert new_state.keys() == old_state.keys()
    assert all(torch.equal(new_state[k], old_state[k]) for k in new_state)
    again = _model(digits)
    assert train_child(again, splits, training, seed=7, device=CPU).history == outcome.history
    assert all(torch.equal(again.state_dict()[k], new_state[k]) for k in new_state)


# ---------------------------------------------------------------- channels_last and data placement


def test_channels_last_reaches_the_convolutions_and_the_weights_come_back_standard(digits):
    model = _model(digits)
    conv = _first_conv(model)
    formats: list[tuple[bool, bool]] = []
    conv.register_forward_pre_hook(
        lambda module, args: formats.append(
            (
                args[0].is_contiguous(memory_format=torch.channels_last),
                module.weight.is_contiguous(memory_format=torch.channels_last),
            )
        )
    )
    outcome = train_child(model, digits, _training(epochs=1), seed=0, device=CPU, channels_last=True)
    assert outcome.channels_last and outcome.diverged is None
    assert formats and all(x_cl and w_cl for x_cl, w_cl in formats)
    assert all(p.is_contiguous() for p in model.parameters())  # standard layout again, as the weight file wants


def test_channels_last_is_off_on_cpu_by_default_and_meant_for_conv_networks(digits):
    model = _model(digits)
    assert uses_conv2d(model) and not uses_conv2d(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    assert train_child(model, digits, _training(epochs=1), seed=0, device=CPU).channels_last is False


def test_place_splits_leaves_cpu_data_alone(digits):
    pairs, resident = place_splits(digits, CPU, channels_last=True)
    assert resident and pairs["train"][0] is digits.train[0] and pairs["test"][1] is digits.test[1]


def test_place_splits_puts_data_on_the_device_when_it_fits(monkeypatch, digits):
    meta = torch.device("meta")
    monkeypatch.setattr(trainer, "_free_memory", lambda device: 1 << 40)
    pairs, resident = place_splits(digits, meta, channels_last=True)
    assert resident and all(t.device == meta for pair in pairs.values() for t in pair)
    assert pairs["train"][0].is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(trainer, "_free_memory", lambda device: 1000)
    pairs, resident = place_splits(digits, meta)
    assert not resident and pairs["train"][0].device == CPU


# ---------------------------------------------------------------- the step


def test_a_non_finite_loss_is_seen_at_once_on_cpu_and_at_the_epoch_end_otherwise(digits):
    x, y = digits.train[0][:16], digits.train[1][:16]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    for each_step in (True, False):
        model = _model(digits)
        step = TrainStep(
            model,
            torch.optim.SGD(model.parameters(), lr=0.01),
            resolve_precision("fp32", CPU)[0],
            check_each_step=each_step,
        )
        assert step(x, y, 0.01) is True
        before = [p.detach().clone() for p in model.parameters()]
        taken = step(bad, y, 0.01)
        loss_sum, correct, seen = step.totals()
        if each_step:
            assert taken is False and seen == 16 and math.isfinite(loss_sum)
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        else:
            assert taken is True and seen == 32 and math.isnan(loss_sum)


def test_compile_true_trains_on_cpu():
    """torch.compile (inductor, C++ on CPU) on a tiny network: it compiles, trains and scores; or falls back with a warning.
    The pinned torch (pyproject.toml) has torch.compile, so this never skips."""
    assert callable(torch.compile), "torch.compile missing: install the pinned torch (make install)"
    splits = load_dataset(
        Dataset(kind="synthetic", input_shape=[1, 8, 8], options={"samples": 64}), space="image-layer", seed=0
    )
    model = _model(splits, TINY)
    outcome = train_child(model, splits, _training(epochs=1, batch_size=22, compile=True), seed=0, device=CPU)
    assert outcome.diverged is None and len(outcome.history["train_loss"]) == 1
    if outcome.compiled:
        assert not outcome.warnings
    else:  # e.g. no C compiler on this machine: the fallback
        assert any("torch.compile failed" in w for w in outcome.warnings)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("where", ["compile", "first call"])
def test_a_failing_compile_falls_back_to_eager_with_a_warning(monkeypatch, digits, where):
    def broken_compile(model, **kw):
        if where == "compile":
            raise RuntimeError("no C compiler\nmore detail")

        def fail(x):
            raise RuntimeError("inductor: backend compiler failed")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    training = _training(epochs=1, compile=True)
    model, eager = _model(digits), _model(digits)
    outcome = train_child(model, digits, training, seed=0, device=CPU)
    assert outcome.compiled is False and outcome.diverged is None
    assert len(outcome.warnings) == 1 and outcome.warnings[0].startswith(
        "torch.compile failed, training without it: RuntimeError: "
    )
    assert "\n" not in outcome.warnings[0]
    reference = train_child(eager, digits, _training(epochs=1), seed=0, device=CPU)
    assert outcome.history == reference.history  # the fallback trained exactly as eager training does


def test_the_result_file_says_how_the_child_ran(tmp_path):
    """result.json records the resolved precision and whether channels_last and compile were on."""
    from child_trainer.cli import main
    from epnas.task import load_result
    from tests.unit.child_trainer.test_trainer import ARCHS, TINY, argv_for, write_task

    fp32 = write_task(tmp_path / "a", ARCHS["image-layer"])
    bf16 = write_task(tmp_path / "b", ARCHS["image-layer"], training={**TINY, "precision": "bf16"})
    assert main(argv_for(fp32)) == 0 and main(argv_for(bf16)) == 0

    plain, mixed = (load_result((d / "result.json").read_text()) for d in (fp32, bf16))
    assert (plain.precision, plain.channels_last, plain.compiled) == ("fp32", False, False)
    assert (mixed.precision, mixed.channels_last, mixed.compiled) == ("bf16", False, False)
