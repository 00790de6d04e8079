"""What the CLIP defenses share: checking the model, pairing the defender's data, the head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from unbackdoor.clip.data.pairs import CaptionedDataset, caption_pairs
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.zeroshot.head import ZeroShotClassifier
from unbackdoor.clip.zeroshot.templates import CLASS_TEMPLATES
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError


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
