"""Contrastive fine-tuning of CLIP models through the project's one training loop.

The loss is CLIP's symmetric cross-entropy over the batch's image-caption similarity matrix
(Radford et al., ICML 2021). Captions made from labels repeat within a batch, so pairs whose
captions name the same class are all positives (a uniform target over them, as in supervised
contrastive learning, Khosla et al., NeurIPS 2020) instead of being pushed apart as negatives.
:func:`contrastive_loss_fn` turns a :class:`CaptionedDataset` into a ``loss_fn(model, batch)``
for :func:`unbackdoor.train.train`, which brings the schedules, checkpoints and bf16.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.clip.data.pairs import CaptionedDataset
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.data.loader import Batch
from unbackdoor.errors import DataError
from unbackdoor.train import TrainConfig, TrainResult, train


def soft_targets(groups: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Row-normalised positives: ``groups[i] == groups[j]`` (the identity when ``None``)."""
    if groups is None:
        return torch.eye(n, device=device)
    same = (groups.view(-1, 1) == groups.view(1, -1)).float()
    return same / same.sum(1, keepdim=True)


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between normalised embeddings; ``groups`` marks shared positives."""
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale.exp().clamp(max=100.0).float() * img @ txt.t()
    t = soft_targets(groups, logits.shape[0], logits.device)
    return 0.5 * (
        F.cross_entropy(logits, t) + F.cross_entropy(logits.t(), t.t() / t.t().sum(1, True))
    )


def caption_tokens(model: ClipModel, data: CaptionedDataset) -> torch.Tensor:
    """The token ids of every caption of ``data`` (one row per sample), tokenised once."""
    if not isinstance(data, CaptionedDataset):
        raise DataError(f"{data.name}: contrastive training needs image-caption pairs")
    unique = sorted(set(data.captions))
    where = {c: i for i, c in enumerate(unique)}
    tok = model.tokenizer(unique)
    return tok[torch.tensor([where[c] for c in data.captions], dtype=torch.long)]


def contrastive_loss_fn(
    model: ClipModel, data: CaptionedDataset, *, group_by_label: bool = True
) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """A ``loss_fn(model, batch)`` for :func:`unbackdoor.train.train` on ``data``'s pairs."""
    tokens = caption_tokens(model, data)

    def loss(net: nn.Module, batch: Batch) -> torch.Tensor:
        tok = tokens[batch.index.cpu()].to(batch.x.device)
        img = net.encode_image(batch.x)
        txt = net.encode_text(tok)
        return contrastive_loss(img, txt, net.logit_scale, batch.y if group_by_label else None)

    return loss


def finetune_contrastive(
    model: ClipModel,
    data: CaptionedDataset,
    config: TrainConfig,
    *,
    desc: str = "clip: contrastive",
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on image-caption pairs with the contrastive loss."""
    return train(
        model, data, config, loss_fn=loss_fn or contrastive_loss_fn(model, data), desc=desc
    )
