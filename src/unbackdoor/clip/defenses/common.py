"""What the CLIP defenses share: checking the model, pairing the defender's data, the head."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

from torch import nn

from unbackdoor.clip.data.pairs import CaptionedDataset, caption_pairs
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.zeroshot.head import ZeroShotClassifier
from unbackdoor.clip.zeroshot.templates import CLASS_TEMPLATES
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError
from unbackdoor.inversion import InversionConfig


def require_clip(model: nn.Module, defense: str) -> ClipModel:
    """``model`` as a :class:`ClipModel`, or an error naming the defense."""
    if not isinstance(model, ClipModel):
        raise ConfigError(
            f"defense {defense!r} works on CLIP models (unbackdoor.clip.ClipModel), got "
            f"{type(model).__name__}; for classifiers use the defense without 'clip-'"
        )
    return model


def as_pairs(data: ImageDataset, seed: int) -> CaptionedDataset:
    """The defender's data as image-caption pairs (captions from labels when it has none)."""
    return caption_pairs(data, seed=seed)


def head(
    model: ClipModel, data: ImageDataset, templates: Sequence[str] | None
) -> ZeroShotClassifier:
    """The zero-shot classifier over ``data``'s classes (the bank of class prompts)."""
    return ZeroShotClassifier(model, data.class_names, list(templates or CLASS_TEMPLATES))


class FrozenText:
    """Context manager: only the image tower is trained (text tower and temperature frozen)."""

    def __init__(self, model: ClipModel) -> None:
        self.model = model
        self.saved: list[tuple[nn.Parameter, bool]] = []

    def __enter__(self) -> ClipModel:
        self.saved = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.freeze_text()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for p, flag in self.saved:
            p.requires_grad_(flag)


@contextmanager
def inversion_batch(module: ModuleType, batch_size: int | None) -> Iterator[None]:
    """Within the block, ``module``'s ``InversionConfig`` takes ``batch_size`` images per step.

    The classifier defenses (:mod:`unbackdoor.defenses.tbar`, :mod:`unbackdoor.defenses.bibau`)
    build their :class:`InversionConfig` with the default batch (32 images per class and step,
    the K classes in one forward); through a CLIP image tower on a CPU that is the whole cost,
    so the CLIP defenses expose ``inversion_batch_size`` and apply it here. ``None``: unchanged.
    """
    if batch_size is None:
        yield
        return
    if batch_size < 1:
        raise ConfigError(f"inversion_batch_size must be >= 1, got {batch_size}")
    original = module.InversionConfig

    def config(**kw: object) -> InversionConfig:
        return dataclasses.replace(InversionConfig(**kw), batch_size=batch_size)  # type: ignore[arg-type]

    module.InversionConfig = config  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.InversionConfig = original  # type: ignore[attr-defined]
