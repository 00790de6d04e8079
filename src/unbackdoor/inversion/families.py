"""Trigger families for reverse-engineering, batched over candidate classes.

- :class:`MaskPattern`: ``x' = (1 - m) * x + m * p`` with a mask ``m`` (1 x H x W) and a pattern
  ``p`` (C x H x W), both in [0, 1] through a sigmoid, as in Neural Cleanse (Wang et al.,
  IEEE S&P 2019). Covers patches and blends.
- :class:`Additive`: ``x' = clamp(x + delta)`` with ``||delta||_inf <= eps`` by projection: the
  invisible and sample-spread triggers (SIG, LF) that a sparse mask misses.
- :class:`Smooth`: an additive trigger that is a bicubic upsampling of a small ``grid x grid``
  lattice per channel, ``||delta||_inf <= eps``: low-frequency triggers (LF: Zeng et al., ICCV
  2021), which the free additive family at the same budget does not single out, since it finds
  a universal adversarial perturbation every network has (``benchmarks/bibau_dev``, session 36);
  limited in frequency, a natural class has little room to be reached.
- :class:`Warp`: ``x`` resampled on a smoothly displaced grid, the displacement a bicubic
  upsampling of a small ``grid x grid`` field of offsets of at most ``eps`` pixels: the family of
  WaNet's trigger (Nguyen and Tran, ICLR 2021), which neither a mask nor a small additive
  perturbation reproduces; its few parameters leave a natural class little room to be reached
  by an adversarial warp.

Each family holds one trigger per candidate class (``K`` of them) so that all classes are
inverted in one batched forward pass; an untargeted inversion (``InversionConfig(targeted=False)``)
holds a single trigger (K = 1) shared by every class (the all-to-all case).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def total_variation(p: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per trigger: K x C x H x W -> K."""
    dh = (p[..., 1:, :] - p[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (p[..., :, 1:] - p[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


class TriggerFamily(nn.Module):
    """K candidate triggers; ``stamp(x, k)`` applies trigger(s) ``k`` to ``x``."""

    kind = "family"
    #: a fixed budget every class may spend (additive, warp): what a class costs is then how
    #: few images the budget moves there, not the trigger's size (a mask grows until it fools)
    budgeted: bool = False
    #: the :class:`~unbackdoor.inversion.InversionConfig` field holding a budgeted family's
    #: budget (None: a mask has none)
    budget_field: str | None = None
    #: how far one optimiser step may move a parameter, per unit of learning rate: the
    #: family's natural scale (mask logits: 1; an additive trigger: its budget ``eps``);
    #: used with ``InversionConfig.scaled_steps``
    step_scale: float = 1.0

    def stamp(self, x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        raise NotImplementedError

    def prior(self) -> torch.Tensor:
        """Per-trigger prior cost (K), the negative log prior up to constants."""
        raise NotImplementedError

    def size(self) -> torch.Tensor:
        """Per-trigger size used for the anomaly score (K): mask L1 or perturbation norm."""
        raise NotImplementedError

    def project(self) -> None:
        """Keep the parameters inside the family's constraint set."""

    def limit_size(self, max_size: float) -> None:
        """Shrink every trigger whose ``size()`` exceeds ``max_size`` onto that size (mask
        families; an additive trigger's budget is its fixed L-inf ball)."""

    def images(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class MaskPattern(TriggerFamily):
    kind = "mask_pattern"

    def __init__(
        self,
        num: int,
        shape: tuple[int, int, int],
        *,
        tv_weight: float = 0.0,
        generator: torch.Generator | None = None,
        init_mask: float = -2.0,
    ) -> None:
        super().__init__()
        c, h, w = shape
        self.mask_logit = nn.Parameter(
            torch.full((num, 1, h, w), init_mask)
            + 0.1 * torch.randn(num, 1, h, w, generator=generator)
        )
        self.pattern_logit = nn.Parameter(torch.randn(num, c, h, w, generator=generator))
        self.tv_weight = tv_weight

    @property
    def mask(self) -> torch.Tensor:
        return torch.sigmoid(self.mask_logit)

    @property
    def pattern(self) -> torch.Tensor:
        return torch.sigmoid(self.pattern_logit)

    def stamp(self, x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        m, p = self.mask[k], self.pattern[k]
        if isinstance(k, int):
            m, p = m.unsqueeze(0), p.unsqueeze(0)
        return (1 - m) * x + m * p

    def size(self) -> torch.Tensor:
        return self.mask.flatten(1).sum(1)

    def limit_size(self, max_size: float) -> None:
        with torch.no_grad():
            m = self.mask
            size = m.flatten(1).sum(1).view(-1, 1, 1, 1)
            over = size > max_size
            if over.any():
                shrunk = (m * max_size / size).clamp(1e-6, 1 - 1e-6)
                logit = torch.log(shrunk) - torch.log1p(-shrunk)
                self.mask_logit.copy_(torch.where(over, logit, self.mask_logit))

    def prior(self) -> torch.Tensor:
        cost = self.size()
        if self.tv_weight:
            cost = cost + self.tv_weight * total_variation(self.pattern)
        return cost

    def images(self) -> dict[str, torch.Tensor]:
        m, p = self.mask.detach(), self.pattern.detach()
        return {"mask": m, "pattern": p, "trigger": m * p}


class Additive(TriggerFamily):
    kind = "additive"
    budgeted = True
    budget_field = "eps"

    def __init__(
        self,
        num: int,
        shape: tuple[int, int, int],
        *,
        eps: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        # a step of lr 0.1 in pixel units would cross a 0.05 box in one move: the trigger
        # would only ever sit on the box's corners
        self.step_scale = eps
        self.delta = nn.Parameter(eps * 0.1 * torch.randn(num, *shape, generator=generator))

    def stamp(self, x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        d = self.delta[k]
        if isinstance(k, int):
            d = d.unsqueeze(0)
        return (x + d).clamp(0, 1)

    def size(self) -> torch.Tensor:
        return self.delta.flatten(1).norm(dim=1)

    def prior(self) -> torch.Tensor:
        return self.delta.flatten(1).pow(2).sum(1)

    def project(self) -> None:
        with torch.no_grad():
            self.delta.clamp_(-self.eps, self.eps)

    def images(self) -> dict[str, torch.Tensor]:
        d = self.delta.detach()
        return {"delta": d, "trigger": (d / (2 * self.eps) + 0.5).clamp(0, 1)}


class Smooth(Additive):
    kind = "smooth"

    def __init__(
        self,
        num: int,
        shape: tuple[int, int, int],
        *,
        eps: float = 0.1,
        grid: int = 4,
        generator: torch.Generator | None = None,
    ) -> None:
        if grid < 2:
            raise ValueError(f"Smooth needs grid >= 2, got {grid}")
        nn.Module.__init__(self)
        c, h, w = shape
        self.eps, self.step_scale, self.hw = eps, eps, (h, w)
        self.control = nn.Parameter(
            eps * 0.1 * torch.randn(num, c, grid, grid, generator=generator)
        )

    @property
    def delta(self) -> torch.Tensor:  # type: ignore[override]
        """The perturbation, K x C x H x W (bicubic overshoot clamped to ``eps``)."""
        up = F.interpolate(self.control, size=self.hw, mode="bicubic", align_corners=True)
        return up.clamp(-self.eps, self.eps)

    def project(self) -> None:
        with torch.no_grad():
            self.control.clamp_(-self.eps, self.eps)


class Warp(TriggerFamily):
    kind = "warp"
    budgeted = True
    budget_field = "warp_shift"

    def __init__(
        self,
        num: int,
        shape: tuple[int, int, int],
        *,
        eps: float = 1.0,
        grid: int = 4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if eps <= 0 or grid < 2:
            raise ValueError(f"Warp needs eps > 0 pixels and grid >= 2, got {eps} and {grid}")
        c, h, w = shape
        self.eps, self.step_scale, self.channels = eps, eps, c
        # offsets in pixels, x then y, on a grid x grid control lattice
        self.control = nn.Parameter(
            eps * 0.1 * torch.randn(num, 2, grid, grid, generator=generator)
        )
        gy, gx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("identity", torch.stack((gx, gy), dim=2)[None], persistent=False)
        # pixels -> grid_sample's normalised coordinates (align_corners=True)
        self.register_buffer(
            "to_unit", torch.tensor([2 / max(1, w - 1), 2 / max(1, h - 1)]), persistent=False
        )

    def field(self) -> torch.Tensor:
        """The displacement in pixels, K x 2 x H x W (bicubic overshoot clamped to ``eps``)."""
        h, w = self.identity.shape[1:3]
        up = F.interpolate(self.control, size=(h, w), mode="bicubic", align_corners=True)
        return up.clamp(-self.eps, self.eps)

    def stamp(self, x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        d = self.field()[k]
        if isinstance(k, int):
            d = d.unsqueeze(0)
        grid = self.identity + d.permute(0, 2, 3, 1) * self.to_unit
        grid = grid.expand(x.shape[0], -1, -1, -1).to(x.dtype)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.clamp(0, 1)

    def size(self) -> torch.Tensor:
        return self.field().flatten(1).norm(dim=1)

    def prior(self) -> torch.Tensor:
        return self.field().flatten(1).pow(2).sum(1)

    def project(self) -> None:
        with torch.no_grad():
            self.control.clamp_(-self.eps, self.eps)

    def images(self) -> dict[str, torch.Tensor]:
        """The field, and a lattice of lines every 4 pixels seen through it (``trigger``)."""
        h, w = self.identity.shape[1:3]
        lattice = torch.zeros(1, self.channels, h, w, device=self.control.device)
        lattice[..., ::4, :] = 1.0
        lattice[..., :, ::4] = 1.0
        k = self.control.shape[0]
        with torch.no_grad():
            warped = torch.cat([self.stamp(lattice, i) for i in range(k)])
            return {"field": self.field().detach(), "trigger": warped}


FAMILIES = {"mask_pattern": MaskPattern, "additive": Additive, "smooth": Smooth, "warp": Warp}
