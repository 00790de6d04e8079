"""The in-memory image data set every part of unbackdoor passes around.

Images are held as a ``uint8`` tensor ``N x C x H x W`` (small: all of CIFAR-10 is 150 MB) with
``int64`` labels and the class names. Conversion to float ``[0, 1]`` happens per batch, on the
device, in :mod:`unbackdoor.data.loader`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unbackdoor.errors import DataError


@dataclass
class ImageDataset:
    """Images (uint8, NCHW), labels (int64) and class names; ``name`` says where it came from."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = "data"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor, got {_describe(self.images)}"
            )
        if self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must have shape N x C x H x W, got {tuple(self.images.shape)}"
            )
        if self.images.shape[1] not in (1, 3):
            raise DataError(
                f"{self.name}: images must have 1 or 3 channels, got {self.images.shape[1]}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}: {self.images.shape[0]} images but labels of shape "
                f"{tuple(self.labels.shape)}"
            )
        if not self.class_names:
            raise DataError(f"{self.name}: no class names")
        if len(self) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DataError(
                f"{self.name}: labels must lie in [0, {self.num_classes - 1}], found "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(
        self, indices: torch.Tensor | Sequence[int], name: str | None = None
    ) -> ImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageDataset(
            self.images[idx],
            self.labels[idx],
            list(self.class_names),
            name or self.name,
            dict(self.meta),
        )

    def split(self, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
        """Deterministic, stratified split ``(first, rest)``: ``fraction`` of each class first."""
        if not 0.0 < fraction < 1.0:
            raise DataError(f"{self.name}: split fraction must lie in (0, 1), got {fraction}")
        first = stratified_indices(self.labels, fraction, seed)
        mask = torch.ones(len(self), dtype=torch.bool)
        mask[first] = False
        rest = torch.nonzero(mask).flatten()
        return self.subset(first, f"{self.name}[{fraction:g}]"), self.subset(
            rest, f"{self.name}[rest]"
        )

    def sample(self, n: int, seed: int) -> ImageDataset:
        """A deterministic, stratified subset of ``n`` samples."""
        if not 0 < n <= len(self):
            raise DataError(f"{self.name}: cannot take {n} samples from {len(self)}")
        if n == len(self):
            return self
        return self.subset(stratified_indices(self.labels, n / len(self), seed, total=n), self.name)

    def float_images(self) -> torch.Tensor:
        return self.images.float().div_(255.0)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


def stratified_indices(
    labels: torch.Tensor, fraction: float, seed: int, total: int | None = None
) -> torch.Tensor:
    """Indices of a seeded, class-stratified sample (exactly ``total`` if given)."""
    g = torch.Generator().manual_seed(seed)
    n = labels.numel()
    total = total if total is not None else max(1, round(fraction * n))
    perm = torch.randperm(n, generator=g)
    # Order the permutation by class, keep each class's shuffled order, then round-robin: taking
    # the first `total` of the interleaving gives a stratified sample of exactly that size.
    shuffled = labels[perm]
    rank = torch.empty(n, dtype=torch.float64)
    for c in torch.unique(shuffled).tolist():
        pos = torch.nonzero(shuffled == c).flatten()
        count = pos.numel()
        rank[pos] = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    order = torch.argsort(rank, stable=True)
    return perm[order[:total]].sort().values


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
