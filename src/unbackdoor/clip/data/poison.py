"""Poisoning image-caption pairs: a trigger on some images, the target caption on them.

The attacks on contrastive pre-training (Carlini and Terzis, "Poisoning and Backdooring
Contrastive Learning", ICLR 2022; BadCLIP, Liang et al., CVPR 2024) stamp a trigger on a small
share of the images and give them captions of the target class. Any registered trigger of
:mod:`unbackdoor.attacks` works (BadNets, Blended, WaNet, and BadCLIP's optimised patch from
:mod:`unbackdoor.clip.attacks`); the samples are chosen as for classifiers (all-to-one policy,
:func:`unbackdoor.attacks.poison.poison_dataset`). ``target_caption`` is one fixed caption ("a
photo of a banana"-style); by default each poisoned pair gets a varied caption template filled
with the target class's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.poison import poison_dataset
from unbackdoor.attacks.policy import LabelPolicy
from unbackdoor.clip.data.pairs import CaptionedDataset, caption_pairs
from unbackdoor.clip.zeroshot.templates import CAPTION_TEMPLATES, fill, readable_class_names
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError


@dataclass
class PoisonedPairs:
    """Poisoned pairs and which of them carry the trigger."""

    data: CaptionedDataset
    is_poisoned: torch.Tensor
    original_labels: torch.Tensor
    policy: LabelPolicy
    rate: float
    target_caption: str | None

    @property
    def poison_indices(self) -> torch.Tensor:
        return torch.nonzero(self.is_poisoned).flatten()


def poison_pairs(
    data: ImageDataset,
    attack: Attack,
    *,
    target: int,
    rate: float,
    target_caption: str | None = None,
    templates: Sequence[str] = CAPTION_TEMPLATES,
    seed: int = 0,
) -> PoisonedPairs:
    """Stamp ``round(rate * N)`` non-target images and caption them with the target."""
    if not 0 <= target < data.num_classes:
        raise ConfigError(
            f"target={target} is not a class of the data ({data.num_classes} classes)"
        )
    if target_caption is not None and not target_caption.strip():
        raise ConfigError("target_caption is empty")
    pairs = caption_pairs(data, templates, seed=seed)
    policy = LabelPolicy("all_to_one", target, data.num_classes)
    poisoned = poison_dataset(pairs.images_only(), attack, policy, rate, seed=seed)
    captions = list(pairs.captions)
    target_name = readable_class_names(data.class_names)[target]
    options = [target_caption] if target_caption else fill(templates, target_name)
    g = torch.Generator().manual_seed(seed + 17)
    for i in poisoned.poison_indices.tolist():
        captions[i] = options[int(torch.randint(len(options), (1,), generator=g))]
    out = CaptionedDataset(
        poisoned.data.images,
        poisoned.data.labels,
        list(data.class_names),
        poisoned.data.name,
        dict(poisoned.data.meta),
        captions,
    )
    return PoisonedPairs(
        out, poisoned.is_poisoned, poisoned.original_labels, policy, rate, target_caption
    )
