"""Small synthetic data sets for fast tests: learnable in a few hundred steps on a CPU."""

from __future__ import annotations

import torch

from unbackdoor.data import ImageDataset


def blobs(
    n: int = 600,
    classes: int = 4,
    channels: int = 1,
    size: int = 16,
    seed: int = 0,
    name: str = "synth",
) -> ImageDataset:
    """Each class is a bright square in its own quadrant-ish spot plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, channels, size, size, generator=g) * 0.3
    step = size // classes
    for c in range(classes):
        x[y == c, :, c * step : c * step + step, : size // 2] += 0.6
    images = (x.clamp(0, 1) * 255).to(torch.uint8)
    return ImageDataset(images, y, [f"c{i}" for i in range(classes)], name)
