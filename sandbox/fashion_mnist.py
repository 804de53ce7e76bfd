"""Reading Fashion-MNIST from Debian's `dataset-fashion-mnist` package (MIT licence).

Used by the data set builder and by the host-side training scripts, so that both read the same bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from sandbox.errors import DataMissing, DataSetError

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMnistMissing(DataMissing):
    """The Debian package is not installed."""


def _read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (the MNIST container format): big-endian dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataSetError(path, "not an unsigned-byte IDX file", "reinstall dataset-fashion-mnist")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def load_split(split: str, root: Path = DEBIAN_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, 28, 28], labels uint8 [N]) of the `train` or `test` split."""
    images_name, labels_name = _FILES[split]
    images_path, labels_path = root / images_name, root / labels_name
    if not images_path.exists() or not labels_path.exists():
        raise FashionMnistMissing(
            images_path, "Fashion-MNIST not found", "install it with `apt-get install dataset-fashion-mnist`"
        )
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if len(images) != len(labels):
        raise DataSetError(root, f"{len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels
