"""CIFAR-10 (50,000 train / 10,000 test, 3x32x32) from whatever copy is on this machine.

Nothing may download data at run time, so this module only finds a copy: the ``root`` argument,
then ``$UNBACKDOOR_CIFAR10`` (a zip, an image folder, or the official python batches), then the
shared ``shared/data/cifar10-jpeg.zip`` beside the repository. Decoding that zip's 60,000 JPEGs
takes seconds, so the decoded arrays are cached (see :func:`unbackdoor.data.folder.cached`).
"""

from __future__ import annotations

import os
from pathlib import Path

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.pickle_batches import is_python_batches, read_python_batches
from unbackdoor.data.registry import conform, load_path, register_dataset
from unbackdoor.errors import DataError

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
ENV_VAR = "UNBACKDOOR_CIFAR10"
SHARED_ZIP = Path("shared") / "data" / "cifar10-jpeg.zip"


def find_shared_zip() -> Path | None:
    """``shared/data/cifar10-jpeg.zip`` in a parent of this package's folder or of the cwd."""
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for parent in (start, *start.parents):
            candidate = parent / SHARED_ZIP
            if candidate.is_file():
                return candidate
    return None


def find_cifar10(root: str | Path | None = None) -> Path:
    """The copy of CIFAR-10 to read: ``root``, else ``$UNBACKDOOR_CIFAR10``, else the shared zip."""
    for given, what in ((root, "root"), (os.environ.get(ENV_VAR) or None, f"${ENV_VAR}")):
        if given is not None:
            path = Path(given).expanduser()
            if not path.exists():
                raise DataError(f"CIFAR-10 {what} {str(path)!r} does not exist")
            return path
    shared = find_shared_zip()
    if shared is not None:
        return shared
    raise DataError(
        f"CIFAR-10 not found: no root given, ${ENV_VAR} unset, and no {SHARED_ZIP.as_posix()} in "
        f"any parent of {Path(__file__).resolve().parent} or of {Path.cwd()}; pass root= or set "
        f"{ENV_VAR} to a zip, an image folder (train/<class>/*) or the python batches directory"
    )


def load_cifar10(split: str = "train", *, root: str | Path | None = None) -> ImageDataset:
    """CIFAR-10 as 3x32x32 uint8 images with the usual class order, from :func:`find_cifar10`."""
    path = find_cifar10(root)
    if is_python_batches(path):
        ds = read_python_batches(path, split, class_names=CIFAR10_CLASSES)
    else:
        # Decoded (and cached) with its own folder names, then mapped to the CIFAR-10 order: the
        # cache entry is then shared with load_dataset("<that zip>") without class_names.
        ds = conform(load_path(path, split), class_names=CIFAR10_CLASSES)
    if ds.input_shape != (3, 32, 32):
        raise DataError(f"{path}: CIFAR-10 images must be 3x32x32, got {ds.input_shape}")
    ds.name = f"cifar10/{split}"
    return ds


@register_dataset("cifar10")
def cifar10(split: str = "train", *, root: str | Path | None = None) -> ImageDataset:
    """CIFAR-10, 50,000 train / 10,000 test, 3x32x32 RGB ($UNBACKDOOR_CIFAR10 or shared zip)."""
    return load_cifar10(split, root=root)
