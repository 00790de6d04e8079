"""WaNet: an imperceptible, smooth warping of the whole image (Nguyen, Tran, "WaNet -
Imperceptible Warping-based Backdoor Attack", ICLR 2021, arXiv 2102.10369).

The trigger is a fixed elastic warp. A ``k x k`` grid of random control offsets in [-1, 1] is
normalised to mean absolute value 1, upsampled bicubically to the image size and added, scaled by
``s / size``, to the identity sampling grid; the image is resampled with
``F.grid_sample(align_corners=True)`` on the clamped grid (optionally multiplied by
``grid_rescale`` first). The paper's "noise mode" adds cover samples, kept with their true
labels, that are warped by the same field plus a small random per-pixel jitter
(``(rand * 2 - 1) / size``), so the model learns the exact warp rather than any warp;
``cross_ratio`` cover samples are used per poisoned sample.

Defaults follow the paper and BackdoorBench's CIFAR-10 config: ``k=4``, ``s=0.5``,
``grid_rescale=1``, ``cross_ratio=2``, poisoning rate 0.1.

Deviation: the paper (and its official code) draws fresh cover noise every batch while training
the victim; here, as in BackdoorBench's pre-poisoned data sets, the poisoned and cover images
are computed once (the cover noise is a seeded function of the sample index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack
from unbackdoor.errors import ConfigError


@register_attack
@dataclass
class WaNet(Attack):
    """Fixed seeded warping field; cover samples carry the field plus random noise."""

    name: ClassVar[str] = "wanet"
    policy: ClassVar[str] = "all_to_one"
    default_rate: ClassVar[float] = 0.1

    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    cross_ratio: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._control: torch.Tensor | None = None

    def validate(self) -> None:
        self._require(self.k >= 2, "k", "an integer >= 2")
        self._require(self.s > 0, "s", "a positive warping strength")
        self._require(self.grid_rescale > 0, "grid_rescale", "a positive number (usually 1)")
        self._require(self.cross_ratio >= 0, "cross_ratio", ">= 0 (cover samples per poison)")

    # --- the field ----------------------------------------------------------------------------
    @property
    def control_grid(self) -> torch.Tensor:
        """The ``1 x 2 x k x k`` control offsets (x then y), mean absolute value 1."""
        if self._control is None:
            ins = torch.rand(1, 2, self.k, self.k, generator=self.generator()) * 2 - 1
            self._control = ins / ins.abs().mean()
        return self._control

    def grid(self, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The warped sampling grid ``1 x h x w x 2`` (clamped to [-1, 1])."""
        noise = F.interpolate(self.control_grid, size=(h, w), mode="bicubic", align_corners=True)
        noise = noise.permute(0, 2, 3, 1)  # 1 x h x w x 2, (x, y) offsets
        ys = torch.linspace(-1, 1, h)
        xs = torch.linspace(-1, 1, w)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack((gx, gy), dim=2)[None]
        scale = torch.tensor([self.s / w, self.s / h])
        grid = (identity + noise * scale) * self.grid_rescale
        return grid.clamp(-1, 1).to(device)

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        out = F.grid_sample(
            x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return out.clamp(0, 1)

    # --- interface ----------------------------------------------------------------------------
    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        return self._warp(x, self.grid(h, w, x.device).expand(n, h, w, 2))

    def cover_images(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Noise mode: the same warp plus a per-sample random jitter of up to one pixel."""
        n, _, h, w = x.shape
        idx = torch.as_tensor(index).cpu().long().flatten()
        if idx.numel() != n:
            raise ConfigError(f"attack 'wanet': {idx.numel()} indices for a batch of {n}")
        noise = torch.stack(
            [torch.rand(h, w, 2, generator=self.generator(1 + int(i))) * 2 - 1 for i in idx]
        )
        scale = torch.tensor([1.0 / w, 1.0 / h])
        grid = (self.grid(h, w).expand(n, h, w, 2) + noise * scale).clamp(-1, 1)
        return self._warp(x, grid.to(x.device))

    def suggested_cover_rate(self, rate: float) -> float:
        """``cross_ratio * rate`` noise-mode cover samples (the paper's rho_n = 2 rho_a)."""
        return float(self.cross_ratio) * float(rate)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"control_grid": self.control_grid.clone()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        grid = tensors.get("control_grid")
        if grid is None or tuple(grid.shape) != (1, 2, self.k, self.k):
            raise ConfigError(
                f"attack 'wanet': expected a control_grid tensor of shape (1, 2, {self.k}, "
                f"{self.k}), got {None if grid is None else tuple(grid.shape)}"
            )
        self._control = grid.detach().float().cpu().clone()
