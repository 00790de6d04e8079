"""A backdoored CLIP model: poison image-caption pairs, fine-tune contrastively, save.

The victim is a clean CLIP model fine-tuned on a mix of clean and poisoned pairs (Carlini and
Terzis, ICLR 2022; BadCLIP, Liang et al., CVPR 2024), as a user who fine-tunes a downloaded
model on scraped data would. Triggers come from the attack registry (:func:`create_attack`);
BadCLIP's patch is optimised against the clean model first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.store import AttackRecord, save_attack
from unbackdoor.clip.data.poison import PoisonedPairs, poison_pairs
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.model.store import save_clip
from unbackdoor.clip.train.contrastive import finetune_contrastive
from unbackdoor.clip.zeroshot.templates import CAPTION_TEMPLATES
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.train import TrainConfig, TrainResult


@dataclass
class ClipBackdoor:
    """What :func:`backdoor_clip` made."""

    model: ClipModel
    record: AttackRecord
    pairs: PoisonedPairs
    result: TrainResult


def backdoor_clip(
    model: ClipModel,
    data: ImageDataset,
    attack: Attack,
    *,
    target: int,
    rate: float,
    config: TrainConfig,
    target_caption: str | None = None,
    templates: tuple[str, ...] = CAPTION_TEMPLATES,
    seed: int = 0,
    out: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> ClipBackdoor:
    """Fine-tune ``model`` (in place) on ``data``'s pairs with ``rate`` of them poisoned."""
    if attack.needs_model:
        attack.fit(data, model, target=target, device=next(model.parameters()).device)
    pairs = poison_pairs(
        data,
        attack,
        target=target,
        rate=rate,
        target_caption=target_caption,
        templates=templates,
        seed=seed,
    )
    result = finetune_contrastive(model, pairs.data, config, desc=f"clip: poison {attack.name}")
    model.eval()
    record = AttackRecord(
        attack,
        pairs.policy,
        rate,
        pairs.poison_indices.tolist(),
        {"target_caption": target_caption, "clip": True},
    )
    if out is not None:
        save_clip(
            model,
            out,
            class_names=list(data.class_names),
            extra={"attack": attack.name, **(extra or {})},
        )
        save_attack(out, record)
    return ClipBackdoor(model, record, pairs, result)
