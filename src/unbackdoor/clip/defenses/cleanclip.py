"""CleanCLIP: fine-tuning with the multimodal and unimodal self-supervised objectives.

Bansal, Singhi, Yang, Yin, Grover, Chang, "CleanCLIP: Mitigating Data Poisoning Attacks in
Multimodal Contrastive Learning" (ICCV 2023, arXiv 2303.03323). The backdoored model is
fine-tuned on clean image-caption pairs with

    L = lambda_mm * InfoNCE(image, caption)
        + lambda_ss * (InfoNCE(aug1(image), aug2(image)) + InfoNCE(aug1(caption), aug2(caption)))

where the unimodal terms make each modality learn its own features independently, which
weakens the spurious trigger-target association. Image augmentations are random crops and
flips (the paper uses AutoAugment; torchvision is not available here); caption augmentations
are EDA-style (Wei and Zou, EMNLP 2019) random word deletion and swap. Defaults follow the
paper where it applies to a small clean set: 10 epochs, batch 64, lambda_mm = lambda_ss = 1,
AdamW with cosine decay; the paper's lr (1e-5 for ViT-B) is raised for small models.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from unbackdoor.clip.defenses.common import as_pairs, require_clip
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.train.contrastive import contrastive_loss, finetune_contrastive
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import Batch
from unbackdoor.data.transforms import Augment
from unbackdoor.defenses.base import Defense, DefenseOutput
from unbackdoor.defenses.registry import register_defense
from unbackdoor.train import TrainConfig


def eda(caption: str, rng: random.Random, p_delete: float = 0.1, n_swap: int = 1) -> str:
    """Random word deletion (each word with ``p_delete``) and ``n_swap`` random swaps."""
    words = caption.split()
    kept = [w for w in words if rng.random() >= p_delete] or words[:1]
    for _ in range(n_swap if len(kept) > 1 else 0):
        i, j = rng.sample(range(len(kept)), 2)
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


@register_defense
@dataclass
class CleanCLIP(Defense):
    """Fine-tune on clean pairs with CLIP's loss plus image-image and text-text InfoNCE."""

    name: ClassVar[str] = "cleanclip"

    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 64
    weight_decay: float = 0.1
    lambda_mm: float = 1.0
    lambda_ss: float = 1.0
    p_delete: float = 0.1

    def validate(self) -> None:
        self._require(self.epochs >= 1, "epochs", ">= 1")
        self._require(self.lr > 0, "lr", "> 0")
        self._require(self.batch_size >= 2, "batch_size", ">= 2 (contrastive)")
        self._require(self.lambda_mm >= 0, "lambda_mm", ">= 0")
        self._require(self.lambda_ss >= 0, "lambda_ss", ">= 0")
        self._require(0 <= self.p_delete < 1, "p_delete", "in [0, 1)")

    def loss_fn(self, model: ClipModel, captions: Sequence[str], size: int) -> Any:
        """CleanCLIP's objective as a ``loss_fn(model, batch)`` for the training loop."""
        aug = Augment(crop_padding=max(1, size // 8), flip=True, seed=self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        rng = random.Random(self.seed)

        def loss(net: nn.Module, batch: Batch) -> torch.Tensor:
            dev = batch.x.device
            caps = [captions[i] for i in batch.index.tolist()]
            tok = net.tokenizer(caps).to(dev)
            total = torch.zeros((), device=dev)
            if self.lambda_mm:
                img = net.encode_image(batch.x)
                total = total + self.lambda_mm * contrastive_loss(
                    img, net.encode_text(tok), net.logit_scale, batch.y
                )
            if self.lambda_ss:
                v1 = net.encode_image(aug(batch.x, gen))
                v2 = net.encode_image(aug(batch.x, gen))
                t1 = net.encode_text(
                    net.tokenizer([eda(c, rng, self.p_delete) for c in caps]).to(dev)
                )
                t2 = net.encode_text(
                    net.tokenizer([eda(c, rng, self.p_delete) for c in caps]).to(dev)
                )
                total = total + self.lambda_ss * (
                    contrastive_loss(v1, v2, net.logit_scale)
                    + contrastive_loss(t1, t2, net.logit_scale)
                )
            return total

        return loss

    def run(
        self, model: nn.Module, clean: ImageDataset, val: ImageDataset, *, known_attack: Any = None
    ) -> DefenseOutput:
        clip = require_clip(model, self.name)
        pairs = as_pairs(clean, self.seed)
        cfg = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer="adamw",
            lr=self.lr,
            weight_decay=self.weight_decay,
            schedule="cosine",
            warmup=0.0,
            augment=False,
            seed=self.seed,
            device=self.device,
        )
        result = finetune_contrastive(
            clip,
            pairs,
            cfg,
            desc="cleanclip",
            loss_fn=self.loss_fn(clip, pairs.captions, pairs.images.shape[-1]),
        )
        return DefenseOutput(
            clip, diagnostics={"history": result.history, "clean_pairs": len(pairs)}
        )
