"""BadNets: a small patch stamped on the image (Gu, Dolan-Gavitt, Garg, "BadNets: Identifying
Vulnerabilities in the Machine Learning Model Supply Chain", arXiv 1708.06733, 2017).

Defaults follow BackdoorBench's CIFAR-10 setting: a 3x3 white square in the bottom-right corner.
``pattern="checker"`` gives the classic checkerboard; ``random_location`` places the patch at a
seeded random position per sample (the index keeps it deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack


@register_attack
@dataclass
class BadNets(Attack):
    """Patch trigger (size, position, colour configurable; optional random location)."""

    name: ClassVar[str] = "badnets"

    size: int = 3
    position: str = "bottom_right"  # top_left, top_right, bottom_left, bottom_right, center
    color: tuple[float, ...] = (1.0,)
    pattern: str = "solid"  # solid or checker
    margin: int = 1
    random_location: bool = False

    def validate(self) -> None:
        self._require(self.size >= 1, "size", "a positive integer")
        self._require(self.position in POSITIONS, "position", f"one of {sorted(POSITIONS)}")
        self._require(self.pattern in ("solid", "checker"), "pattern", "'solid' or 'checker'")
        self._require(
            all(0.0 <= c <= 1.0 for c in self.color),
            "color",
            "values in [0, 1] (one, or one per channel)",
        )
        self._require(self.margin >= 0, "margin", ">= 0")

    def patch(self, channels: int) -> torch.Tensor:
        color = torch.tensor(self.color, dtype=torch.float32)
        if color.numel() == 1:
            color = color.expand(channels)
        if color.numel() != channels:
            from unbackdoor.errors import ConfigError

            raise ConfigError(
                f"attack 'badnets': color has {color.numel()} values for {channels}-channel images"
            )
        p = color.view(-1, 1, 1).expand(channels, self.size, self.size).clone()
        if self.pattern == "checker":
            ii, jj = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
            p = p * ((ii + jj) % 2 == 0).float()
        return p

    def locations(self, n: int, h: int, w: int, index: torch.Tensor | None) -> torch.Tensor:
        s, m = self.size, self.margin
        if self.random_location:  # a seeded hash of the sample index: same sample, same place
            idx = (index if index is not None else torch.arange(n)).cpu().long()
            key = idx * 2_654_435_761 + int(self.seed) * 40_503
            rows = (key // 7 ^ (key >> 13)) % (h - s + 1)
            cols = (key // 11 ^ (key >> 17)) % (w - s + 1)
            return torch.stack([rows, cols], 1)
        r, c = POSITIONS[self.position](h, w, s, m)
        return torch.tensor([[r, c]]).expand(n, 2)

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        n, ch, h, w = x.shape
        p = self.patch(ch).to(x)
        out = x.clone()
        locs = self.locations(n, h, w, index)
        if not self.random_location:
            r, c = (int(v) for v in locs[0])
            out[:, :, r : r + self.size, c : c + self.size] = p
            return out
        for i, (r, c) in enumerate(locs.tolist()):
            out[i, :, r : r + self.size, c : c + self.size] = p
        return out


POSITIONS = {
    "top_left": lambda h, w, s, m: (m, m),
    "top_right": lambda h, w, s, m: (m, w - s - m),
    "bottom_left": lambda h, w, s, m: (h - s - m, m),
    "bottom_right": lambda h, w, s, m: (h - s - m, w - s - m),
    "center": lambda h, w, s, m: ((h - s) // 2, (w - s) // 2),
}
