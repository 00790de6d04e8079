"""A tiny CLIP-style model that trains in seconds on a CPU, for tests and quick experiments.

Image tower: two conv-BN-ReLU stages, global pooling and a linear projection (``visual.*``).
Text tower: token embeddings averaged over the non-padding tokens of a
:class:`~unbackdoor.clip.model.tokenize.HashTokenizer` row, then an MLP (``text.*``). The loss,
zero-shot head and defenses treat it exactly like a real CLIP (Radford et al., ICML 2021).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.model.tokenize import HashTokenizer


class TinyClip(ClipModel):
    """Conv image tower + bag-of-words text tower, ``embed_dim``-dimensional embeddings."""

    kind = "tiny"

    def __init__(
        self,
        image_size: int = 16,
        in_channels: int = 3,
        width: int = 32,
        embed_dim: int = 32,
        vocab_size: int = 512,
        context_length: int = 16,
    ) -> None:
        tok = HashTokenizer(vocab_size, context_length)
        half = (0.5,) * in_channels
        super().__init__(
            tok, (image_size, image_size), in_channels=in_channels, mean=half, std=half
        )
        self.args = {
            "image_size": image_size,
            "in_channels": in_channels,
            "width": width,
            "embed_dim": embed_dim,
            "vocab_size": vocab_size,
            "context_length": context_length,
        }
        self.visual = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, embed_dim),
        )
        self.text = nn.ModuleDict(
            {
                "embed": nn.Embedding(vocab_size, width, padding_idx=0),
                "mlp": nn.Sequential(
                    nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, embed_dim)
                ),
            }
        )

    def _encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        e = (self.text["embed"](tokens) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.text["mlp"](e)

    def config(self) -> dict[str, Any]:
        return dict(self.args)
