"""Datasets: fixed splits, proxies, safe CIFAR-10 batches, npz, augmentation."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from child_trainer.data import DatasetError, augment_images, load_dataset, read_cifar_batch
from epnas.spec import Dataset


def ds(**kw) -> Dataset:
    return Dataset.model_validate(kw)


def test_digits_fixed_split_independent_of_seed():
    a = load_dataset(ds(kind="digits"), space="image-layer", seed=1)
    b = load_dataset(ds(kind="digits"), space="image-layer", seed=2)
    assert [len(p[0]) for p in (a.train, a.val, a.test)] == [1200, 300, 297]
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.val[0], b.val[0]) and float(a.train[0].max()) <= 1.0


def test_sample_ratio_and_resolution_proxies():
    splits = load_dataset(ds(kind="digits"), space="image-layer", seed=0, resolution=16, sample_ratio=0.25)
    assert len(splits.train[0]) == 300 and len(splits.val[0]) == 300
    assert splits.input_shape == (1, 16, 16) and splits.train[0].shape[1:] == (1, 16, 16)


@pytest.mark.parametrize(
    ("space", "shape"), [("image-layer", (3, 32, 32)), ("image-module", (3, 32, 32)), ("kws-layer", (1, 49, 40))]
)
def test_synthetic_takes_the_space_shape(space, shape):
    splits = load_dataset(ds(kind="synthetic", options={"samples": 60}), space=space, seed=0)
    assert splits.input_shape == shape and splits.train[0].shape[1:] == shape
    again = load_dataset(ds(kind="synthetic", options={"samples": 60}), space=space, seed=5)
    assert torch.equal(splits.train[0], again.train[0])


def _fake_cifar(directory, per_batch=20):
    rng = np.random.default_rng(0)
    directory.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * per_batch,
        }
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    return directory


def test_cifar10_directory_and_augmentation(tmp_path):
    root = _fake_cifar(tmp_path / "cifar")
    for uri in (str(root), root.as_uri()):
        splits = load_dataset(ds(kind="cifar10", uri=uri), space="image-layer", seed=0)
        assert len(splits.train[0]) == 80 and len(splits.val[0]) == 20 and len(splits.test[0]) == 20
        assert splits.input_shape == (3, 32, 32) and splits.augment is not None
    out = augment_images(splits.train[0][:8], torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and not torch.equal(out, splits.train[0][:8])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_batches_refuse_arbitrary_globals():
    with pytest.raises(DatasetError, match="not allowed"):
        read_cifar_batch(pickle.dumps({b"data": _Evil(), b"labels": []}))


def test_missing_cifar_directory_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(ds(kind="cifar10", uri=str(tmp_path / "none")), space="image-layer", seed=0)


def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(30, 8, 8)),
        y_train=rng.integers(0, 4, 30),
        x_val=rng.normal(size=(6, 8, 8)),
        y_val=rng.integers(0, 4, 6),
    )
    splits = load_dataset(
        ds(kind="npz", uri=str(path), input_shape=[1, 8, 8], num_classes=4), space="image-layer", seed=0
    )
    assert splits.train[0].shape == (30, 1, 8, 8) and torch.equal(splits.test[0], splits.val[0])


@pytest.mark.parametrize(
    ("name", "arrays", "message"),
    [
        ("missing arrays", {"x_train": np.zeros((4, 1, 8, 8))}, "lacks"),
        (
            "shape",
            {
                "x_train": np.zeros((4, 1, 6, 6)),
                "y_train": np.zeros(4, int),
                "x_val": np.zeros((2, 1, 6, 6)),
                "y_val": np.zeros(2, int),
            },
            "input shape",
        ),
        (
            "labels",
            {
                "x_train": np.zeros((4, 1, 8, 8)),
                "y_train": np.full(4, 9),
                "x_val": np.zeros((2, 1, 8, 8)),
                "y_val": np.zeros(2, int),
            },
            "labels",
        ),
        (
            "object arrays",
            {
                "x_train": np.array([None, 1], dtype=object),
                "y_train": np.zeros(2, int),
                "x_val": np.zeros((2, 1, 8, 8)),
                "y_val": np.zeros(2, int),
            },
            "unreadable",
        ),
    ],
)
def test_npz_problems_are_dataset_errors(name, arrays, message, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(ds(kind="npz", uri=str(path), input_shape=[1, 8, 8], num_classes=4), space="image-layer", seed=0)
