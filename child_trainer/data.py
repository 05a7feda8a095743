"""Datasets for children: fixed train/validation/test splits as in-memory tensors.

* ``digits``: the 8×8 digits inside scikit-learn (1797 samples, scaled by 1/16), split
  1200/300/297 with a fixed permutation (seed 0, independent of the child's seed, so
  every child is rewarded on the same validation set).
* ``cifar10``: the python-pickle batch format (``data_batch_1..5``, ``test_batch``)
  from a directory or store URI; the last 5000 training images are the validation
  set.  The batches are decoded by ``SafeUnpickler``, which refuses every global but
  the three numpy ones an array needs (and
  ``_codecs.encode``, which protocol 2 uses for bytes), so a crafted file cannot run code.  Training
  batches get the papers' augmentation (flip, 4-pixel pad-and-crop, brightness,
  contrast) on the fly.
* ``npz``: ``x_train``/``y_train``/``x_val``/``y_val`` [``x_test``/``y_test``; the
  validation set doubles as test set when absent], read with ``allow_pickle=False``.
* ``synthetic``: seeded class templates plus noise in any input shape, so a model
  can beat chance (options: ``samples`` 512, ``noise`` 1.0, ``seed`` 0, ``shift`` 0: each
  sample rolled along H by up to ±shift, which rewards translation-invariant layers).

Nothing is ever downloaded.  Problems with the data (missing file, wrong shape)
raise ``epnas.errors.DatasetError`` (an ``InvalidInput``): the trainer exits 2.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from epnas.errors import DatasetError
from epnas.ops import as_shape
from epnas.space import get_space
from epnas.spec import Dataset
from epnas.store import StoreError, StoreNotFound, join_uri, open_store, split_uri

SPLIT_SEED = 0
DIGITS_SPLIT = (1200, 300)
CIFAR_VAL = 5000
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class Splits:
    """``(x, y)`` tensors per split; ``x`` is float32 ``(N, C, H, W)``, ``y`` int64 ``(N,)``."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    input_shape: tuple[int, int, int]
    num_classes: int
    augment: Augment | None = None


def load_dataset(
    dataset: Dataset, *, space: str, seed: int, resolution: int | None = None, sample_ratio: float = 1.0
) -> Splits:
    """The splits for ``dataset``, resized to ``resolution`` and with ``sample_ratio`` of the training set.

    ``seed`` picks which training samples the sample ratio keeps.  Raises ``DatasetError``.
    """
    loaders = {"digits": _digits, "cifar10": _cifar10, "npz": _npz, "synthetic": _synthetic}
    splits = loaders[dataset.kind](dataset, space)
    _check_declared(dataset, splits)
    if sample_ratio < 1:
        splits.train = subsample(splits.train, sample_ratio, seed)
    if resolution is not None and splits.input_shape[1:] != (resolution, resolution):
        splits = resize(splits, resolution)
    return splits


def _check_declared(dataset: Dataset, splits: Splits) -> None:
    if dataset.input_shape is not None and tuple(dataset.input_shape) != splits.input_shape:
        raise DatasetError(
            f"dataset {dataset.kind} has input shape {list(splits.input_shape)}, the task declares {list(dataset.input_shape)}"
        )
    if dataset.num_classes is not None and dataset.kind != "synthetic" and dataset.num_classes < splits.num_classes:
        raise DatasetError(
            f"dataset {dataset.kind} has labels up to {splits.num_classes - 1}, the task declares {dataset.num_classes} classes"
        )


def subsample(pair: tuple[torch.Tensor, torch.Tensor], ratio: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded ``ratio`` of the samples (at least one)."""
    x, y = pair
    keep = max(1, math.ceil(len(x) * ratio))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:keep]
    return x[order], y[order]


def resize(splits: Splits, resolution: int) -> Splits:
    """Every split bilinearly resized to ``resolution``×``resolution`` (EcoNAS resolution proxy)."""

    def scale(pair):
        x, y = pair
        return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False), y

    c = splits.input_shape[0]
    return Splits(
        scale(splits.train),
        scale(splits.val),
        scale(splits.test),
        (c, resolution, resolution),
        splits.num_classes,
        splits.augment,
    )


def _pairs(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32), torch.as_tensor(
        np.asarray(y), dtype=torch.int64
    )


def _split(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int) -> tuple:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    x, y = x[order], y[order]
    cut = n_train + n_val
    return _pairs(x[:n_train], y[:n_train]), _pairs(x[n_train:cut], y[n_train:cut]), _pairs(x[cut:], y[cut:])


# ---------------------------------------------------------------- digits


def _digits(dataset: Dataset, space: str) -> Splits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    train, val, test = _split(x, bunch.target, *DIGITS_SPLIT)
    return Splits(train, val, test, (1, 8, 8), 10)


# ---------------------------------------------------------------- synthetic


def _synthetic(dataset: Dataset, space: str) -> Splits:
    shape = as_shape(dataset.input_shape) if dataset.input_shape else get_space(space).input_shape
    classes = dataset.num_classes or 10
    samples = int(dataset.options.get("samples", 512))
    noise = float(dataset.options.get("noise", 1.0))
    if samples < 3 * classes:
        raise DatasetError(f"synthetic dataset needs at least {3 * classes} samples, got {samples}")
    rng = np.random.default_rng(int(dataset.options.get("seed", SPLIT_SEED)))
    templates = rng.normal(0, 1, (classes, *shape)).astype(np.float32)
    y = np.arange(samples) % classes
    x = templates[y] + noise * rng.normal(0, 1, (samples, *shape)).astype(np.float32)
    shift = int(dataset.options.get("shift", 0))
    if shift < 0:
        raise DatasetError(f"synthetic option shift must be >= 0, got {shift}")
    if shift:  # each sample's pattern moved along H (time, for KWS) by up to ±shift, cyclically
        offsets = rng.integers(-shift, shift + 1, samples)
        x = np.stack([np.roll(x[i], int(offsets[i]), axis=1) for i in range(samples)])
    n_train = int(samples * 0.7)
    n_val = int(samples * 0.15)
    train, val, test = _split(x, y, n_train, n_val)
    return Splits(train, val, test, shape, classes)


# ---------------------------------------------------------------- npz


def _npz(dataset: Dataset, space: str) -> Splits:
    assert dataset.uri is not None and dataset.input_shape is not None and dataset.num_classes is not None, (
        "Dataset's validator: npz declares uri, inputShape and numClasses"
    )
    data = _read(dataset.uri, "npz file")
    try:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        names = set(arrays.files)
        missing = {"x_train", "y_train", "x_val", "y_val"} - names
        if missing:
            raise DatasetError(f"npz dataset {dataset.uri} lacks {', '.join(sorted(missing))}")
        shape = as_shape(dataset.input_shape)
        pairs = {}
        for split in ("train", "val", "test"):
            if f"x_{split}" in names:
                pairs[split] = _npz_pair(arrays[f"x_{split}"], arrays[f"y_{split}"], shape, split)
    except (ValueError, OSError, KeyError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"npz dataset {dataset.uri} unreadable: {err}") from None
    labels = int(max(int(p[1].max()) for p in pairs.values())) + 1
    if labels > dataset.num_classes or min(int(p[1].min()) for p in pairs.values()) < 0:
        raise DatasetError(f"npz dataset labels must be in 0..{dataset.num_classes - 1}")
    return Splits(pairs["train"], pairs["val"], pairs.get("test", pairs["val"]), shape, dataset.num_classes)


def _npz_pair(x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], split: str):
    if x.ndim == 3 and shape[0] == 1:
        x = x[:, None]
    if tuple(x.shape[1:]) != shape:
        raise DatasetError(
            f"npz x_{split} has sample shape {list(x.shape[1:])}, the task declares input shape {list(shape)}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"npz y_{split} must be {len(x)} integer labels")
    return _pairs(x.astype(np.float32), y)


# ---------------------------------------------------------------- cifar10


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: every other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how a Python 3 protocol-2 pickle spells a bytes object
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset batch")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def read_cifar_batch(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch → ``(uint8 images (N, 3, 32, 32), labels (N,))``."""
    try:
        batch = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
        images = np.asarray(batch[b"data"] if b"data" in batch else batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"] if b"labels" in batch else batch["labels"], dtype=np.int64)
        return images.reshape(-1, 3, 32, 32), labels
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DatasetError(f"not a CIFAR-10 batch: {err}") from None


def _cifar10(dataset: Dataset, space: str) -> Splits:
    assert dataset.uri is not None, "Dataset's validator: cifar10 declares uri"
    images, labels = [], []
    for i in range(1, 6):
        x, y = read_cifar_batch(_read(join_uri(dataset.uri, f"data_batch_{i}"), "CIFAR-10 batch"))
        images.append(x)
        labels.append(y)
    x_all, y_all = np.concatenate(images), np.concatenate(labels)
    x_test, y_test = read_cifar_batch(_read(join_uri(dataset.uri, "test_batch"), "CIFAR-10 batch"))
    mean = np.asarray(CIFAR_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR_STD, dtype=np.float32).reshape(1, 3, 1, 1)

    def norm(x):
        return (x.astype(np.float32) / 255.0 - mean) / std

    n_val = min(CIFAR_VAL, len(x_all) // 5)
    train = _pairs(norm(x_all[:-n_val]), y_all[:-n_val])
    val = _pairs(norm(x_all[-n_val:]), y_all[-n_val:])
    return Splits(train, val, _pairs(norm(x_test), y_test), (3, 32, 32), 10, augment_images)


def augment_images(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip, 4-pixel zero-pad-and-crop, brightness (±0.25) and contrast (0.8–1.2) per image.

    The random numbers come from ``generator`` (a CPU generator) and are moved to
    ``x``'s device, so a batch on a GPU is augmented there with the same draws.
    """
    n, _, h, w = x.shape
    device = x.device
    flip = (torch.rand(n, generator=generator) < 0.5).to(device, non_blocking=True)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).to(device, non_blocking=True)
    dx = torch.randint(0, 9, (n,), generator=generator).to(device, non_blocking=True)
    rows = (dy.view(n, 1) + torch.arange(h, device=device).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 8)
    x = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=device).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    x = x.gather(3, cols)
    brightness = ((torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.5).to(device, non_blocking=True)
    contrast = (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)).to(device, non_blocking=True)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + brightness


# ---------------------------------------------------------------- reading


def _read(uri: str, what: str) -> bytes:
    """The bytes at ``uri`` (file path, ``file://`` or ``s3://``); a missing object is a ``DatasetError``."""
    try:
        root, key = split_uri(uri)
        return open_store(root).get_bytes(key)
    except StoreNotFound:
        raise DatasetError(f"{what} not found: {uri}") from None
    except StoreError as err:
        if uri.startswith("s3://"):
            raise
        raise DatasetError(f"{what} unreadable: {err}") from None
