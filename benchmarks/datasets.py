"""Readers for the real data sets the evaluations use (installed from Debian or PyPI)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from honer.errors import ToolchainError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [N, 1, 28, 28] scaled to [0, 1] and standardized; labels int64."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz"
    if not images.exists():
        raise ToolchainError("dataset-fashion-mnist",
                             "apt-get install dataset-fashion-mnist (Debian package)")
    x = _idx(images).astype(np.float32) / 255.0
    y = _idx(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    x = (x - 0.2860) / 0.3530  # the training set's mean and std
    return x.reshape(-1, 1, 28, 28), y
