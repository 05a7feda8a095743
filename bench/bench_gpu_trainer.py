"""Benchmark: images/s of the trainer's training step against a minimal hand-written AMP loop.

Both rows train the same network (a CIFAR-sized image-layer net built by
``epnas.build``, identical initial weights) on the same batch of random 3×32×32
images, already on the device, with the same SGD optimiser (Nesterov momentum 0.9,
weight decay 5e-4) and gradient clipping to norm 5, measured side by side in one
run: each repeat times ``--steps`` steps of one row, then of the other, and a row's
figure is the median of its ``--repeats`` repeats (after ``--warmup`` untimed steps
each, which also pay for cuDNN autotuning and ``torch.compile``).

* ``trainer``: ``child_trainer.train.TrainStep``, what ``train_child`` runs per
  batch: precision resolved as the trainer does (``--precision auto``: bf16 on a
  CUDA GPU with bfloat16, fp16 with a gradient scaler on other CUDA GPUs, fp32 on
  CPU), channels_last on CUDA, loss and accuracy summed on the device (on CPU the
  loss is checked each step), optional ``--compile``.
* ``hand-written AMP``: ``zero_grad``; forward and loss under ``torch.autocast`` in
  the same dtype (off for fp32); ``GradScaler(enabled=fp16)``: scale, backward,
  unscale, clip, step, update.  Standard memory layout, no compile.

Reports images/s per row and their ratio (trainer / hand-written); ``--json`` prints
one JSON object.  Usage: ``python bench/bench_gpu_trainer.py [--device auto|cpu|cuda]
[--precision auto|fp32|bf16|fp16] [--compile] [--batch N] [--steps N] [--repeats N]
[--warmup N] [--width N] [--json]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from child_trainer.train import CLIP_NORM, TrainStep, in_memory_format, resolve_precision, uses_conv2d
from epnas.arch import parse_arch
from epnas.build import build_model

INPUT = (3, 32, 32)
CLASSES = 10
LR = 0.05
DEFAULTS = {
    "cuda": {"batch": 256, "steps": 50, "repeats": 5, "warmup": 10},
    "cpu": {"batch": 64, "steps": 5, "repeats": 3, "warmup": 2},
}


def network(width: int) -> nn.Module:
    """conv → separable conv → max-pool → conv with a skip from the first layer, ``width`` and 2×``width`` channels."""
    arch = parse_arch(
        {
            "space": "image-layer",
            "layers": [
                {"op": "conv2d", "src1": 0, "channels": width, "width": 3, "activation": "relu"},
                {"op": "dep-sep-conv2d", "src1": 1, "channels": width, "width": 5, "activation": "swish"},
                {"op": "maxpool", "src1": 2, "width": 2},
                {"op": "conv2d", "src1": 3, "src2": 1, "channels": 2 * width, "width": 3, "activation": "relu"},
            ],
        }
    )
    return build_model(arch, INPUT, CLASSES)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)


class HandWrittenAMP:
    """The textbook loop: autocast forward and loss, GradScaler backward, unscale, clip, step."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device):
        self.model, self.dtype, self.device = model, dtype, device
        self.optimizer = _optimizer(model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = F.cross_entropy(self.model(xb), yb)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run, steps: int, device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return time.perf_counter() - started


def measure(
    device: torch.device,
    *,
    precision: str = "auto",
    compile: bool = False,
    batch: int,
    steps: int,
    repeats: int,
    warmup: int,
    width: int = 64,
    seed: int = 0,
) -> dict:
    """Both rows on ``device``; returns the report (rows with median images/s, their ratio)."""
    resolved, warning = resolve_precision(precision, device)
    torch.manual_seed(seed)
    base = network(width)
    x = torch.randn(batch, *INPUT, generator=torch.Generator().manual_seed(seed)).to(device)
    y = torch.randint(0, CLASSES, (batch,), generator=torch.Generator().manual_seed(seed + 1)).to(device)

    product_model = copy.deepcopy(base).to(device)
    channels_last = device.type == "cuda" and uses_conv2d(product_model)
    if channels_last:
        product_model.to(memory_format=torch.channels_last)
    warnings: list[str] = [warning] if warning else []
    step = TrainStep(
        product_model,
        _optimizer(product_model),
        resolved,
        compile=compile,
        check_each_step=device.type == "cpu",
        warnings=warnings,
    )
    x_product = in_memory_format(x, channels_last)

    def product() -> None:
        step(x_product, y, LR)

    reference = HandWrittenAMP(copy.deepcopy(base).to(device), resolved.dtype, device)

    def hand_written() -> None:
        reference(x, y)

    rows = {"trainer": product, "hand-written AMP": hand_written}
    product_model.train()
    reference.model.train()
    with torch.backends.cudnn.flags(enabled=True, benchmark=device.type == "cuda", deterministic=False):
        for run in rows.values():
            _timed(run, warmup, device)
        step.start_epoch()
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(repeats):
            for name, run in rows.items():
                times[name].append(_timed(run, steps, device))
        step.totals()  # what train_child reads once an epoch
    report_rows = []
    for name, seconds in times.items():
        rates = [batch * steps / s for s in seconds]
        report_rows.append(
            {"name": name, "images_per_s": round(statistics.median(rates), 1), "repeats": [round(r, 1) for r in rates]}
        )
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": resolved.name,
        "channels_last": channels_last,
        "compiled": step.compiled,
        "batch": batch,
        "steps": steps,
        "repeats": repeats,
        "warmup": warmup,
        "width": width,
        "params": sum(p.numel() for p in base.parameters()),
        "rows": report_rows,
        "ratio": round(report_rows[0]["images_per_s"] / report_rows[1]["images_per_s"], 3),
        "warnings": warnings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument("--compile", action="store_true", help="the trainer's row uses torch.compile")
    parser.add_argument("--batch", type=int, help="images per step (default 256 on CUDA, 64 on CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per repeat (default 50 on CUDA, 5 on CPU)")
    parser.add_argument(
        "--repeats", type=int, help="repeats per row; the median is reported (default 5 on CUDA, 3 on CPU)"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps per row first (default 10 on CUDA, 2 on CPU)")
    parser.add_argument(
        "--width", type=int, default=64, help="channels of the first layers (the last has twice as many)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but CUDA is not available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in DEFAULTS[device.type].items()}
    if min(sizes["batch"], sizes["steps"], sizes["repeats"]) < 1 or sizes["warmup"] < 0:
        parser.error("--batch, --steps and --repeats must be at least 1, --warmup at least 0")
    report = measure(device, precision=args.precision, compile=args.compile, width=args.width, **sizes)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(
        f"{report['device_name']} ({report['device']}), torch {report['torch']}, precision {report['precision']}, "
        f"channels_last {report['channels_last']}, compiled {report['compiled']}, batch {report['batch']}, "
        f"{report['steps']} steps × {report['repeats']} repeats"
    )
    for row in report["rows"]:
        print(f"  {row['name']:<18} {row['images_per_s']:>12,.1f} images/s (median; repeats {row['repeats']})")
    print(f"  ratio trainer / hand-written: {report['ratio']}")
    for warning in report["warnings"]:
        print(f"  warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
