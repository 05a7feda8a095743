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

Speed on a GPU (``TrainStep``, ``place_splits``), all through torch's own APIs:

* ``precision`` (``resolve_precision``): ``auto`` is bf16 on a CUDA device that
  supports it, fp16 on other CUDA devices and fp32 on CPU; bf16 and fp16 run
  forward and loss under ``torch.autocast``, fp16 with a ``torch.amp.GradScaler``.
  Asked for explicitly, bf16 and fp16 also run on CPU (CPU autocast).
* channels_last: on CUDA a network with 2-D convolutions, and its 4-D inputs, are
  put in ``torch.channels_last`` (the tensor-core layout); the weights are given
  back in the standard layout when training ends.
* data: on CUDA the splits are copied to the device once (non-blocking) when they
  take at most ``RESIDENT_FRACTION`` of its free memory, the batch order and the
  augmentation run there; otherwise batches travel from pinned host memory with
  non-blocking copies.  Loss and accuracy are summed on the device and read once an
  epoch, so the host never waits on the GPU inside an epoch (a non-finite loss is
  then found at the epoch's end); cuDNN autotuning is on while a child trains.
* ``compile``: the training forward pass goes through ``torch.compile``; when that
  fails (no C compiler, an unsupported op) the child trains eagerly with a warning.

On CPU with precision fp32 (what auto means there) none of this applies: the same
seed gives bit-identical weights and history to the trainer before these options.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
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
RESIDENT_FRACTION = 0.5
"""On a GPU the splits live on the device when they need at most this fraction of its free memory."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainOutcome:
    """Final validation and test accuracy, per-epoch history, epochs run, seconds, warnings;
    ``diverged`` says why training diverged (``None`` when it did not); ``precision``,
    ``channels_last``, ``compiled`` and ``resident`` (data on the device) say how it ran."""

    val_accuracy: float
    test_accuracy: float
    history: dict[str, list[float]]
    epochs_run: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    diverged: str | None = None
    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False
    resident: bool = True


def lr_at(training: ChildTraining, epoch_progress: float, steps_done: int, steps_per_epoch: int) -> float:
    """The learning rate after ``epoch_progress`` epochs (fractional) and ``steps_done`` optimiser steps.

    standard: SGDR — within the current period of length ``T_i`` (``T_0``, ``T_0·T_mult``, …),
    ``lr_min + (lr − lr_min)·(1 + cos(π·t/T_i))/2``.  prediction: one cosine from lr to
    ``lr_min`` over ``epochs``, after a linear warm-up from lr/10.
    """
    lr, lr_min = training.lr, training.lr_min
    assert lr is not None and lr_min is not None, "lr_at takes a resolved() ChildTraining"
    if training.regime == "standard":
        t, period = epoch_progress, float(training.t0)
        while t >= period:
            t -= period
            period *= training.t_mult
        return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / period)) / 2
    assert training.epochs is not None, "lr_at takes a resolved() ChildTraining"
    warmup = max(WARMUP_STEPS, steps_per_epoch)
    cosine = lr_min + (lr - lr_min) * (1 + math.cos(math.pi * min(epoch_progress / training.epochs, 1.0))) / 2
    if steps_done < warmup:
        return cosine * (0.1 + 0.9 * steps_done / warmup)
    return cosine


def recalibrate_batchnorm(
    model: nn.Module, x: torch.Tensor, batch: int, device: torch.device, limit: int = RECALIBRATE_SAMPLES
) -> None:
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


# ---------------------------------------------------------------- how a step runs


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` fp32, bf16 or fp16 on ``device_type`` (cpu, cuda)."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to the precision's dtype; a no-op for fp32."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16 (whose small range underflows gradients), else ``None``."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def resolve_precision(choice: str, device: torch.device) -> tuple[Precision, str | None]:
    """The precision ``choice`` (auto, fp32, bf16, fp16) means on ``device``, and a warning when it had to change.

    auto: bf16 on a CUDA device with native bfloat16, fp16 on other CUDA devices,
    fp32 elsewhere (CPU).  bf16 on a CUDA device without native bfloat16 is fp16.
    """
    if choice not in ("auto", *DTYPES):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {choice!r}")
    cuda = device.type == "cuda"
    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if choice == "auto":
        return Precision("bf16" if native_bf16 else "fp16" if cuda else "fp32", device.type), None
    if choice == "bf16" and cuda and not native_bf16:
        return Precision(
            "fp16", device.type
        ), "precision bf16 asked for, but this GPU has no native bfloat16: training in fp16"
    return Precision(choice, device.type), None


def uses_conv2d(model: nn.Module) -> bool:
    """Whether ``model`` has a 2-D convolution (then channels_last pays off on a GPU)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def in_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def place_splits(
    splits: Splits, device: torch.device, channels_last: bool = False
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], bool]:
    """The train, val and test pairs where training reads them, and whether they are resident on ``device``.

    On CPU the splits' own tensors (unchanged).  On another device: copied there once,
    non-blocking (4-D inputs in channels_last when asked), when they need at most
    ``RESIDENT_FRACTION`` of the device's free memory; otherwise left on the host in
    pinned memory, for non-blocking copies batch by batch.
    """
    pairs = {"train": splits.train, "val": splits.val, "test": splits.test}
    if device.type == "cpu":
        return pairs, True
    need = sum(t.numel() * t.element_size() for pair in pairs.values() for t in pair)
    if need <= RESIDENT_FRACTION * _free_memory(device):
        return {
            k: (in_memory_format(x.to(device, non_blocking=True), channels_last), y.to(device, non_blocking=True))
            for k, (x, y) in pairs.items()
        }, True
    pinned = device.type == "cuda"
    return {k: (x.pin_memory(), y.pin_memory()) if pinned else (x, y) for k, (x, y) in pairs.items()}, False


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return 0  # an unknown accelerator: leave the data on the host


class TrainStep:
    """One optimiser step as ``train_child`` takes it, and the epoch's running loss and accuracy.

    ``step(xb, yb, rate)``: set the learning rate, forward and loss under the
    precision's autocast, backward (scaled for fp16), clip the gradient norm to
    ``CLIP_NORM``, step.  With ``check_each_step`` (on CPU) a non-finite loss is
    seen at once: the step returns False and changes nothing; otherwise the sums
    stay on the device and ``totals()`` reports the non-finite epoch.  With
    ``compile`` the forward pass goes through ``torch.compile``; a failure there
    falls back to the eager network for good and adds a warning.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        precision: Precision,
        *,
        compile: bool = False,
        check_each_step: bool = True,
        warnings: list[str] | None = None,
    ):
        self.model, self.optimizer, self.precision = model, optimizer, precision
        self.scaler = precision.scaler()
        self.check_each_step = check_each_step
        self.warnings = warnings if warnings is not None else []
        self.forward: Callable[[torch.Tensor], torch.Tensor] = model
        if compile:
            try:
                self.forward = torch.compile(model)
            except Exception as err:  # noqa: BLE001 - any failure to compile means: train eagerly
                self._fall_back(err)
        self.start_epoch()

    @property
    def compiled(self) -> bool:
        return self.forward is not self.model

    def start_epoch(self) -> None:
        """Zero the epoch's sums (float64 loss × samples, correct predictions, samples seen)."""
        device = next(self.model.parameters(), torch.empty(0)).device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0

    def _fall_back(self, err: Exception) -> None:
        self.forward = self.model
        self.warnings.append(f"torch.compile failed, training without it: {type(err).__name__}: {_first_line(err)}")

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, rate: float) -> bool:
        if not self.compiled:
            return self._step(self.model, xb, yb, rate)
        try:
            return self._step(self.forward, xb, yb, rate)
        except Exception as err:  # noqa: BLE001 - compiling happens on the first call (and on new shapes)
            self._fall_back(err)
            return self._step(self.model, xb, yb, rate)

    def _step(
        self, forward: Callable[[torch.Tensor], torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, rate: float
    ) -> bool:
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        with self.precision.autocast():
            logits = forward(xb)
            loss = F.cross_entropy(logits, yb)
        if self.check_each_step and not torch.isfinite(loss):
            return False
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        n = len(yb)
        self.loss_sum += loss.detach().double() * n  # float64, as the float sum of loss.item() * n was
        self.correct += (logits.detach().argmax(1) == yb).sum()
        self.seen += n
        return True

    def totals(self) -> tuple[float, int, int]:
        """The epoch's summed loss (× samples), correct predictions and samples (one device sync)."""
        return self.loss_sum.item(), int(self.correct.item()), self.seen


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), "no message")


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device):
    """cuDNN picks the fastest convolution algorithms while a child trains on CUDA (restored after)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


# ---------------------------------------------------------------- the loop


def train_child(
    model: nn.Module,
    splits: Splits,
    training: ChildTraining,
    *,
    seed: int,
    device: torch.device,
    patience: int | None = None,
    deadline_s: float | None = None,
    channels_last: bool | None = None,
) -> TrainOutcome:
    """Train ``model`` under the resolved ``training`` regime; return accuracies and history.

    ``channels_last`` None: on CUDA for a network with 2-D convolutions, never on CPU.
    The model is left on ``device`` in the standard memory layout.
    """
    started = time.monotonic()
    precision, changed = resolve_precision(training.precision, device)
    warnings: list[str] = [changed] if changed else []
    if channels_last is None:
        channels_last = device.type == "cuda" and uses_conv2d(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        with _cudnn_autotune(device):
            outcome = _train(
                model, splits, training, seed, device, precision, channels_last, warnings, patience, deadline_s, started
            )
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    outcome.seconds = time.monotonic() - started
    return outcome


def _train(
    model, splits, training, seed, device, precision, channels_last, warnings, patience, deadline_s, started
) -> TrainOutcome:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=training.lr,
        momentum=training.momentum,
        nesterov=training.momentum > 0,
        weight_decay=training.weight_decay,
    )
    pairs, resident = place_splits(splits, device, channels_last)
    x_train, y_train = pairs["train"]
    on_host = x_train.device.type == "cpu" and device.type != "cpu"
    batch = min(training.batch_size, len(x_train))
    steps_per_epoch = max(1, len(x_train) // batch if len(x_train) % batch < 2 else -(-len(x_train) // batch))
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}
    step_fn = TrainStep(
        model, optimizer, precision, compile=training.compile, check_each_step=device.type == "cpu", warnings=warnings
    )
    best_val, stale, steps_done, epochs_run = -1.0, 0, 0, 0
    divergence: str | None = None
    rate = training.lr
    for epoch in range(training.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        if not on_host:
            order = order.to(x_train.device, non_blocking=True)
        step_fn.start_epoch()
        diverged = False
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            if len(idx) < 2:
                continue  # a batch of one breaks batch-norm on 1×1 maps
            xb, yb = x_train[idx], y_train[idx]
            if on_host:
                xb, yb = xb.pin_memory().to(device, non_blocking=True), yb.pin_memory().to(device, non_blocking=True)
            if splits.augment is not None:
                xb = splits.augment(xb, generator)
            xb, yb = in_memory_format(xb.to(device), channels_last), yb.to(device)
            rate = lr_at(training, epoch + step / steps_per_epoch, steps_done, steps_per_epoch)
            if not step_fn(xb, yb, rate):
                diverged = True
                break
            steps_done += 1
        loss_sum, correct, seen = step_fn.totals()
        diverged = diverged or not math.isfinite(loss_sum)
        epochs_run = epoch + 1
        with precision.autocast():
            recalibrate_batchnorm(model, pairs["train"][0], batch, device)
            val_loss, val_acc = evaluate(model, pairs["val"], device)
        for key, value in (
            ("train_loss", loss_sum / max(seen, 1)),
            ("train_acc", correct / max(seen, 1)),
            ("val_loss", val_loss),
            ("val_acc", val_acc),
            ("lr", rate),
        ):
            history[key].append(float(value))
        guess = math.log(max(splits.num_classes, 2))
        if diverged:
            divergence = f"training loss became non-finite in epoch {epoch + 1} (lr {rate:g})"
            break
        if seen and loss_sum / seen > DIVERGENCE_FACTOR * guess:
            divergence = (
                f"training loss {loss_sum / seen:.4g} in epoch {epoch + 1} is over {DIVERGENCE_FACTOR:g}× "
                f"that of a uniform guess (ln {splits.num_classes} = {guess:.3f}; lr {rate:g})"
            )
            break
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            warnings.append(f"time limit of {deadline_s:.0f} s reached after {epochs_run} epochs")
            break
        if patience is not None:
            stale = 0 if val_acc > best_val else stale + 1
            best_val = max(best_val, val_acc)
            if stale >= patience:
                break
    with precision.autocast():
        val_loss, val_acc = evaluate(model, pairs["val"], device)
        _, test_acc = evaluate(model, pairs["test"], device)
    if divergence is None and not math.isfinite(val_loss):
        divergence = f"validation loss is {val_loss} after {epochs_run} epochs"
    return TrainOutcome(
        val_acc,
        test_acc,
        history,
        epochs_run,
        0.0,
        warnings,
        divergence,
        precision=precision.name,
        channels_last=channels_last,
        compiled=step_fn.compiled,
        resident=resident,
    )
