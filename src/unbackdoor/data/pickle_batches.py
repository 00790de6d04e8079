"""The official CIFAR-10 "python version": pickled batches, read without ever running their code.

Users bring CIFAR-10 as ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
``batches.meta``) or as the ``cifar-10-python.tar.gz`` it comes in. Those files are pickles, and a
pickle can run any code when loaded; a tool that removes backdoors must not be the way one gets in.
So they are read with an unpickler that allows only the globals the real files contain (numpy
array reconstruction) and refuses everything else with :class:`UnsafeFileError`.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import DataError, UnsafeFileError

BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
META_FILE = "batches.meta"
_ALL_FILES = {META_FILE, *BATCH_FILES["train"], *BATCH_FILES["test"]}
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_PIXELS = 3 * 32 * 32


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


# The complete list of globals in the official files (written by Python 2 with numpy 1.x) and in
# the same data re-pickled by Python 3 with numpy 2 (protocol 3 and up).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, numbers and strings; refuses every other global."""

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise UnsafeFileError(
                f"{self.where}: refused to load the global {module}.{name}: CIFAR-10 python "
                "batches hold only numpy arrays, lists and strings, so this file is not one "
                "(it could run code if unpickled)"
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self.where}: refused a persistent id in a pickle ({pid!r})")


def restricted_loads(data: bytes, where: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; a broken pickle is a DataError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), where).load()
    except UnsafeFileError:
        raise
    except Exception as e:  # pickle raises many types on malformed input
        raise DataError(f"{where}: not a readable pickle ({type(e).__name__}: {e})") from None


def _get(d: dict, key: str, where: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{where}: no {key!r} entry (found {sorted(map(_text, d))})")


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def parse_batch(obj: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (``N x 3 x 32 x 32`` uint8) and labels (int64) of one unpickled batch."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict with data and labels, got {type(obj).__name__}")
    data = _get(obj, "data", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else (type(data).__name__)
        )
        raise DataError(f"{where}: 'data' must be an N x {_PIXELS} uint8 array, got {got}")
    if data.shape[1] != _PIXELS:
        raise DataError(
            f"{where}: 'data' must be N x {_PIXELS} (3 x 32 x 32), got shape {data.shape}"
        )
    raw = _get(obj, "labels", where)
    try:
        labels = np.asarray(raw)
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
    except Exception:
        ok = False
    if not ok:
        raise DataError(f"{where}: 'labels' must be a list of integers")
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{where}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _batch_files(path: Path) -> tuple[Path, dict[str, bytes] | None] | None:
    """Where the batches are: a directory (or its ``cifar-10-batches-py/``), or a tar archive."""
    if path.is_dir():
        for d in (path, path / "cifar-10-batches-py"):
            if any((d / f).is_file() for f in _ALL_FILES):
                return d, None
        return None
    if path.is_file() and path.name.lower().endswith(_TAR_SUFFIXES):
        return path, _read_tar(path)
    return None


def is_python_batches(path: str | Path) -> bool:
    """Whether ``path`` looks like CIFAR-10 python batches (directory or tar archive)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.name.lower().endswith(_TAR_SUFFIXES)
    return _batch_files(path) is not None


def _read_tar(path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in _ALL_FILES and base not in files:
                    f = tar.extractfile(m)
                    if f is not None:
                        files[base] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tar archive ({e})") from None
    if not files:
        raise DataError(
            f"{path}: holds no CIFAR-10 python batches ({', '.join(sorted(_ALL_FILES))})"
        )
    return files


def read_python_batches(
    path: str | Path, split: str = "train", *, class_names: Sequence[str] | None = None
) -> ImageDataset:
    """CIFAR-10 from its python batches: a directory or the ``.tar.gz`` holding them.

    ``class_names`` (the model's classes) maps the label names of ``batches.meta`` to indices.
    """
    from unbackdoor.data.folder import class_index_map

    path = Path(path).expanduser()
    if split not in BATCH_FILES:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(BATCH_FILES)}")
    found = _batch_files(path)
    if found is None:
        raise DataError(
            f"{path}: not a CIFAR-10 python batches directory (expected "
            f"{', '.join(BATCH_FILES['train'])}, test_batch and {META_FILE})"
        )
    root, in_tar = found

    def read(fname: str) -> bytes | None:
        if in_tar is not None:
            return in_tar.get(fname)
        p = root / fname
        try:
            return p.read_bytes() if p.is_file() else None
        except OSError as e:
            raise DataError(f"{p}: cannot read file ({e.strerror or e})") from None

    def where(fname: str) -> str:
        return f"{root}:{fname}" if in_tar is not None else str(root / fname)

    missing = [f for f in BATCH_FILES[split] if read(f) is None]
    if missing:
        raise DataError(f"{root}: missing CIFAR-10 batch file(s) {', '.join(missing)} for {split}")
    images, labels = [], []
    for fname in BATCH_FILES[split]:
        x, y = parse_batch(restricted_loads(read(fname) or b"", where(fname)), where(fname))
        images.append(x)
        labels.append(y)
    x = np.concatenate(images)
    y = np.concatenate(labels)

    meta_bytes = read(META_FILE)
    if meta_bytes is not None:
        meta = restricted_loads(meta_bytes, where(META_FILE))
        if not isinstance(meta, dict):
            raise DataError(f"{where(META_FILE)}: expected a dict with label_names")
        raw_names = _get(meta, "label_names", where(META_FILE))
        if not isinstance(raw_names, list) or not raw_names:
            raise DataError(f"{where(META_FILE)}: 'label_names' must be a non-empty list")
        label_names = [_text(n) for n in raw_names]
    else:
        from unbackdoor.data.cifar10 import CIFAR10_CLASSES

        label_names = list(CIFAR10_CLASSES)
    if len(y) and (y.min() < 0 or y.max() >= len(label_names)):
        raise DataError(
            f"{root}: labels must lie in [0, {len(label_names) - 1}], found [{y.min()}, {y.max()}]"
        )
    present = [label_names[i] for i in np.unique(y).tolist()]
    names, index = class_index_map(present, class_names, str(root))
    if class_names is None:
        names = label_names  # keep the file's own order, classes absent from this split included
        index = {n: i for i, n in enumerate(names)}
    lut = np.array([index.get(n, -1) for n in label_names], dtype=np.int64)
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(x)),
        torch.from_numpy(lut[y]),
        names,
        f"cifar10/{split}",
        {"source": str(path), "format": "python-batches", "split": split},
    )
