"""Contrastive training of CLIP models (through :func:`unbackdoor.train.train`)."""

from unbackdoor.clip.train.contrastive import (
    caption_tokens,
    contrastive_loss,
    contrastive_loss_fn,
    finetune_contrastive,
)

__all__ = ["caption_tokens", "contrastive_loss", "contrastive_loss_fn", "finetune_contrastive"]
