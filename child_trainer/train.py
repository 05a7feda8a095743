"""Training regimes (EPNAS §4.1, §3.4): ``standard`` and ``prediction``.

* ``standard``: SGD with Nesterov momentum 0.9, weight decay 5e-4, SGDR
  (``CosineAnnealingWarmRestarts(T_0=10, T_mult=2, eta_min=lr_min)``) stepped per
  batch, lr 0.05 → 0.001, batch 128, 20 epochs.
* ``prediction``: the same optimiser with batch 1024 and lr 0.5, decayed by a
  cosine from lr to ``lr_min`` (0) over the epochs, and stopped at 10 epochs.  Such
  a large rate diverges on small data without help, so the first epoch (at least
  ``WARMUP_STEPS`` steps) warms up linearly from lr/10 and gradients are clipped to
  norm ``CLIP_NORM`` in both regimes.  An optional plateau stop (``patience``
  epochs without a validation gain) is off by default: it would give children
  different budgets and so blur the ranking the proxy exists for.

Every number comes from the resolved ``ChildTraining``.  Determinism on CPU: the
model and batch order are seeded, ``torch.use_deterministic_algorithms(True)``.
A non-finite loss stops training with a warning (the child scores what it has).
Before every evaluation the batch-norm statistics are re-estimated on up to 2048
training samples (``recalibrate_batchnorm``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from child_trainer.data import Splits
from epnas.spec import ChildTraining

CLIP_NORM = 5.0
WARMUP_STEPS = 5
EVAL_BATCH = 1024
RECALIBRATE_SAMPLES = 2048
DIVERGENCE_FACTOR = 10.0
"""Training diverged when an epoch's mean loss exceeds this many times ``ln K``, the loss of a uniform guess over K classes."""


@dataclass
class TrainOutcome:
    """Final validation and test accuracy, per-epoch history, epochs run, seconds, warnings;
    ``diverged`` says why training diverged (``None`` when it did not)."""

    val_accuracy: float
    test_accuracy: float
    history: dict[str, list[float]]
    epochs_run: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    diverged: str | None = None


def lr_at(training: ChildTraining, epoch_progress: float, steps_done: int, steps_per_epoch: int) -> float:
    """The learning rate after ``epoch_progress`` epochs (fractional) and ``steps_done`` optimiser steps.

    standard: SGDR — within the current period of length ``T_i`` (``T_0``, ``T_0·T_mult``, …),
    ``lr_min + (lr − lr_min)·(1 + cos(π·t/T_i))/2``.  prediction: one cosine from lr to
    ``lr_min`` over ``epochs``, after a linear warm-up from lr/10.
    """
    lr, lr_min = training.lr, training.lr_min
    if training.regime == "standard":
        t, period = epoch_progress, float(training.t0)
        while t >= period:
            t -= period
            period *= training.t_mult
        return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / period)) / 2
    warmup = max(WARMUP_STEPS, steps_per_epoch)
    cosine = lr_min + (lr - lr_min) * (1 + math.cos(math.pi * min(epoch_progress / training.epochs, 1.0))) / 2
    if steps_done < warmup:
        return cosine * (0.1 + 0.9 * steps_done / warmup)
    return cosine


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch: int, device: torch.device, limit: int = RECALIBRATE_SAMPLES) -> None:
    """Re-estimate every batch-norm's running statistics on up to ``limit`` training samples.

    With few large steps (the prediction regime) the exponential running averages lag
    far behind the weights and evaluation scores near chance although the model has
    learned; an equal-weight average over one pass fixes that at the cost of a
    forward pass over ``limit`` samples.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(x) < 2:
        return
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    sample = x[: min(limit, len(x))]
    with torch.no_grad():
        for start in range(0, len(sample), batch):
            chunk = sample[start : start + batch]
            if len(chunk) >= 2:
                model(chunk.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def evaluate(model: nn.Module, pair: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on ``pair``."""
    x, y = pair
    if len(x) == 0:
        return 0.0, 0.0
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            xb, yb = x[start : start + EVAL_BATCH].to(device), y[start : start + EVAL_BATCH].to(device)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / len(x), correct / len(x)


def train_child(
    model: nn.Module,
    splits: Splits,
    training: ChildTraining,
    *,
    seed: int,
    device: torch.device,
    patience: int | None = None,
    deadline_s: float | None = None,
) -> TrainOutcome:
    """Train ``model`` under the resolved ``training`` regime; return accuracies and history."""
    started = time.monotonic()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=training.lr, momentum=training.momentum, nesterov=training.momentum > 0, weight_decay=training.weight_decay
    )
    x_train, y_train = splits.train
    batch = min(training.batch_size, len(x_train))
    steps_per_epoch = max(1, len(x_train) // batch if len(x_train) % batch < 2 else -(-len(x_train) // batch))
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}
    warnings: list[str] = []
    best_val, stale, steps_done, epochs_run = -1.0, 0, 0, 0
    divergence: str | None = None
    rate = training.lr
    for epoch in range(training.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        diverged = False
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            if len(idx) < 2:
                continue  # a batch of one breaks batch-norm on 1×1 maps
            xb, yb = x_train[idx], y_train[idx]
            if splits.augment is not None:
                xb = splits.augment(xb, generator)
            xb, yb = xb.to(device), yb.to(device)
            rate = lr_at(training, epoch + step / steps_per_epoch, steps_done, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = rate
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            optimizer.step()
            steps_done += 1
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
        epochs_run = epoch + 1
        recalibrate_batchnorm(model, x_train, batch, device)
        val_loss, val_acc = evaluate(model, splits.val, device)
        for key, value in (("train_loss", loss_sum / max(seen, 1)), ("train_acc", correct / max(seen, 1)), ("val_loss", val_loss), ("val_acc", val_acc), ("lr", rate)):
            history[key].append(float(value))
        guess = math.log(max(splits.num_classes, 2))
        if diverged:
            divergence = f"training loss became non-finite in epoch {epoch + 1} (lr {rate:g})"
            break
        if seen and loss_sum / seen > DIVERGENCE_FACTOR * guess:
            divergence = (f"training loss {loss_sum / seen:.4g} in epoch {epoch + 1} is over {DIVERGENCE_FACTOR:g}× "
                          f"that of a uniform guess (ln {splits.num_classes} = {guess:.3f}; lr {rate:g})")
            break
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            warnings.append(f"time limit of {deadline_s:.0f} s reached after {epochs_run} epochs")
            break
        if patience is not None:
            stale = 0 if val_acc > best_val else stale + 1
            best_val = max(best_val, val_acc)
            if stale >= patience:
                break
    val_loss, val_acc = evaluate(model, splits.val, device)
    _, test_acc = evaluate(model, splits.test, device)
    if divergence is None and not math.isfinite(val_loss):
        divergence = f"validation loss is {val_loss} after {epochs_run} epochs"
    return TrainOutcome(val_acc, test_acc, history, epochs_run, time.monotonic() - started, warnings, divergence)
