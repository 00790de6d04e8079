"""One entry point for every data set: a registered name (``mnist``, ``cifar10``) or a path.

Defenses, the CLI and the benchmark all call :func:`load_dataset`, passing the model's class names
and input shape from its manifest, so whatever the user brings (a folder holding only some
classes, grayscale or larger images) arrives with the model's label indices and input size.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.folder import (
    SPLITS,
    check_channels,
    check_image_size,
    class_index_map,
    read_image_folder,
)
from unbackdoor.data.pickle_batches import is_python_batches, read_python_batches
from unbackdoor.errors import DataError
from unbackdoor.registry import Registry

#: Loaders called as ``loader(split, root=root) -> ImageDataset``.
DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset")


def register_dataset(
    name: str, description: str | None = None
) -> Callable[[Callable[..., ImageDataset]], Callable[..., ImageDataset]]:
    """Decorator: register ``loader(split, *, root=None) -> ImageDataset`` under ``name``."""
    return DATASETS.register(name, description)


def list_datasets() -> dict[str, str]:
    """Registered data set names, each with a one-line description."""
    return DATASETS.describe()


def load_dataset(
    name_or_path: str | Path,
    split: str = "train",
    *,
    class_names: list[str] | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    root: str | Path | None = None,
) -> ImageDataset:
    """Load a data set by registered name or from a path.

    ``name_or_path``: a registered name (see :func:`list_datasets`; it wins over a same-named
    folder, write ``./name`` for the folder), an image folder or zip (``<split>/<class>/<image>``,
    or ``<class>/<image>`` whose whole content is returned for either split), or CIFAR-10 python
    batches (a directory or the ``.tar.gz``). ``split``: ``"train"`` or ``"test"``.
    ``class_names`` (the model's classes) maps each class folder / label name to the model's index;
    ``image_size`` ``(height, width)`` and ``channels`` (1 or 3) resize (bilinear) and convert the
    images to the model's input. ``root`` is passed to a registered loader (where its files are).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    size = check_image_size(image_size)
    channels = check_channels(channels)
    key = str(name_or_path)
    if isinstance(name_or_path, str) and key in DATASETS:
        ds = DATASETS.get(key)(split, root=root)
        return conform(ds, class_names=class_names, image_size=size, channels=channels)
    path = Path(key).expanduser()
    if not path.exists():
        raise DataError(
            f"{key!r} is neither a registered data set ({', '.join(DATASETS.names())}) nor an "
            "existing folder, zip or CIFAR-10 python batches"
        )
    return load_path(path, split, class_names=class_names, image_size=size, channels=channels)


def load_path(
    path: str | Path,
    split: str = "train",
    *,
    class_names: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Read a folder, a zip or CIFAR-10 python batches at ``path`` (see :func:`load_dataset`)."""
    path = Path(path).expanduser()
    if is_python_batches(path):
        ds = read_python_batches(path, split)
        return conform(ds, class_names=class_names, image_size=image_size, channels=channels)
    if path.is_dir() or zipfile.is_zipfile(path):
        return read_image_folder(
            path, split, class_names=class_names, image_size=image_size, channels=channels
        )
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    raise DataError(
        f"{path}: not an image folder, a zip of one, or CIFAR-10 python batches "
        "(data_batch_1..5, test_batch, batches.meta)"
    )


def conform(
    ds: ImageDataset,
    *,
    class_names: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """``ds`` with the model's class indices, input size (bilinear) and channel count."""
    images, labels, names = ds.images, ds.labels, list(ds.class_names)
    if class_names is not None and list(class_names) != names:
        present = [names[i] for i in torch.unique(labels).tolist()]
        names, index = class_index_map(present, class_names, str(ds.meta.get("source", ds.name)))
        lut = torch.tensor([index.get(n, -1) for n in ds.class_names], dtype=torch.int64)
        labels = lut[labels]
    channels = check_channels(channels)
    size = check_image_size(image_size)
    if channels is not None and channels != images.shape[1]:
        images = _convert_channels(images, channels)
    if size is not None and tuple(images.shape[2:]) != size:
        images = _resize(images, size)
    if images is ds.images and labels is ds.labels and names == ds.class_names:
        return ds
    return ImageDataset(images, labels, names, ds.name, dict(ds.meta))


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    # ITU-R 601-2 luma in PIL's fixed point, so this matches convert("L") on folders exactly.
    w = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
    for s in range(0, images.shape[0], 8192):
        chunk = images[s : s + 8192].to(torch.int32)
        out[s : s + 8192] = ((chunk * w).sum(1, keepdim=True) + 0x8000) >> 16
    return out


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Bilinear with antialiasing, which matches PIL's BILINEAR resize (used for folders).
    out = torch.empty((images.shape[0], images.shape[1], *size), dtype=torch.uint8)
    for s in range(0, images.shape[0], 4096):
        x = images[s : s + 4096].float()
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[s : s + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
