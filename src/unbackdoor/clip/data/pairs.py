"""Image-caption pairs made from labelled images, with varied caption templates.

A :class:`CaptionedDataset` is an :class:`~unbackdoor.data.dataset.ImageDataset` whose sample
``i`` also has ``captions[i]``; its label is the class the caption names (for a poisoned pair,
the attacker's target), which the contrastive loss uses to treat same-class captions of a batch
as positives rather than as negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unbackdoor.clip.zeroshot.templates import CAPTION_TEMPLATES, fill, readable_class_names
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import DataError


@dataclass
class CaptionedDataset(ImageDataset):
    """Images, labels (the class each caption names), class names and one caption per image."""

    captions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.captions) != len(self):
            raise DataError(f"{self.name}: {len(self)} images but {len(self.captions)} captions")

    def subset(
        self, indices: torch.Tensor | Sequence[int], name: str | None = None
    ) -> CaptionedDataset:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return CaptionedDataset(
            self.images[idx],
            self.labels[idx],
            list(self.class_names),
            name or self.name,
            dict(self.meta),
            [self.captions[i] for i in idx.tolist()],
        )

    def images_only(self) -> ImageDataset:
        """The same images and labels as a plain :class:`ImageDataset`."""
        return ImageDataset(
            self.images, self.labels, list(self.class_names), self.name, dict(self.meta)
        )


def caption_pairs(
    data: ImageDataset,
    templates: Sequence[str] = CAPTION_TEMPLATES,
    *,
    seed: int = 0,
) -> CaptionedDataset:
    """Give every image a caption: a seeded random template filled with its class name."""
    if isinstance(data, CaptionedDataset):
        return data
    if not templates:
        raise DataError("caption_pairs needs at least one caption template")
    names = readable_class_names(data.class_names)
    filled = [fill(templates, n) for n in names]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(templates), (len(data),), generator=g).tolist()
    captions = [filled[int(y)][t] for y, t in zip(data.labels.tolist(), pick, strict=True)]
    return CaptionedDataset(
        data.images, data.labels, list(data.class_names), data.name, dict(data.meta), captions
    )
