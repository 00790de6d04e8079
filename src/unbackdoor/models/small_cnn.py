"""A small CNN for MNIST-sized inputs: two conv blocks and two linear layers.

The classic LeNet-style baseline used by backdoor papers on MNIST (e.g. BadNets, Gu et al.,
arXiv 1708.06733); trains to ~99% in one epoch on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unbackdoor.models.registry import Normalize, register_model


class SmallCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        width: int = 32,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        h, w = (int(s) // 4 for s in input_size)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * h * w, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


@register_model("small_cnn", "Two conv blocks + MLP head; the fast MNIST model (~99% in an epoch).")
def small_cnn(**kw) -> nn.Module:
    return SmallCNN(**kw)
