"""Fashion-MNIST in its real format (four gzipped IDX files), written small for the tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mobilenets.data.classification import FASHION_MNIST_FILES


def idx_gz(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 00 00 08 ndim, big-endian dims, the bytes; gzipped."""
    return gzip.compress(idx_header(*array.shape) + array.astype(np.uint8).tobytes(), mtime=0)


def idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)


def fashion_arrays(train: int = 20, test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(train) * 3 % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(test) % 10).astype(np.uint8),
    }


def fashion_files(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """File name -> contents of the four gzipped IDX files."""
    return {name: idx_gz(arrays[key]) for key, (name, _) in FASHION_MNIST_FILES.items()}


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
