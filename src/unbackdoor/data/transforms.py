"""Batched tensor augmentation without torchvision: random crop with padding, horizontal flip.

Works on a whole float batch at once (one gather), which is what makes CPU training fast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    flip = flip.to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator | None = None, mode: str = "reflect"
) -> torch.Tensor:
    """Pad by ``padding`` and take a random crop of the original size, per image."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode=mode)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # n x h
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # n x w
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    # Gather rows then columns with advanced indexing: n x c x h x w.
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def alternating_flip(x: torch.Tensor, index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
    """Flip a fixed seeded half of the samples in even epochs and the other half in odd ones.

    airbench's "alternating flip": every sample is seen both ways in any two epochs, which
    reduces the variance of random flipping.
    """
    key = (index.long() * 2_654_435_761 + seed * 97) % 2_147_483_647
    flip = ((key >> 7) % 2 == 1) ^ bool(epoch % 2)
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


class Augment:
    """Random crop (``padding`` pixels, reflect) then flip, applied to a float batch in [0, 1].

    ``flip``: ``"random"`` (each image with probability 1/2), ``"alternating"`` or ``"none"``
    (``True``/``False`` are accepted for random/none).
    """

    def __init__(self, crop_padding: int = 4, flip: bool | str = True, seed: int = 0) -> None:
        self.crop_padding = crop_padding
        self.flip = {True: "random", False: "none"}.get(flip, flip)  # type: ignore[arg-type]
        self.seed = seed

    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        index: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip == "random":
            x = random_flip(x, generator)
        elif self.flip == "alternating":
            idx = index if index is not None else torch.arange(x.shape[0])
            x = alternating_flip(x, idx, epoch, self.seed)
        return x

    def __repr__(self) -> str:
        return f"Augment(crop_padding={self.crop_padding}, flip={self.flip})"


def default_augment(dataset_name: str, image_size: int) -> Augment | None:
    """Standard augmentation: crop + flip for natural images, nothing for digits."""
    if "mnist" in dataset_name.lower():
        return None
    return Augment(crop_padding=max(1, image_size // 8), flip=True)
