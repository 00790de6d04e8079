"""BppAttack: colour-depth reduction as the trigger (Wang, Zhai, Ma, "BppAttack: Stealthy and
Efficient Trojan Attacks against Deep Neural Networks via Image Quantization and Contrastive
Adversarial Learning", CVPR 2022, arXiv 2205.13383).

The trigger quantises every channel to ``squeeze_num`` levels (``round(x * (s - 1)) / (s - 1)``
on the 0-255 image), optionally with Floyd-Steinberg error diffusion (``dithering``) so the
reduced image keeps its local mean and looks natural. All-to-one.

Defaults follow BackdoorBench's ``bpp/default.yaml``: ``squeeze_num = 8``, ``dithering = False``
(also the default of the authors' released code), poison rate 0.1 and ``neg_ratio = 0.1``. The
dithering loop is sequential over pixels, as error diffusion must be, but runs over the whole
batch and all channels at once.

Negative ("contrastive adversarial") samples: the paper trains on extra samples that carry a
quantisation-like perturbation yet keep their true label, so the network learns the exact
quantisation and not just any small perturbation. BackdoorBench and the authors' code build them
without a model, as ``x_i + (Q(x_j) - x_j)``: the quantisation residual of another image ``x_j``
added to ``x_i``, clipped. :meth:`BppAttack.cover_images` does the same with ``x_j`` another
member of the same batch (a seeded derangement of the batch's indices; a batch of one uses its
own residual shifted by half the image). :meth:`BppAttack.suggested_cover_rate` returns
``neg_ratio``. Deviations: the originals redraw the negatives (and the poisoned samples) in every
training batch, while here both are fixed once in the poisoned data set; the levels are clipped
to ``[0, s - 1]`` while dithering (the reference code lets diffused error push a pixel past the
palette).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Round each value of ``x`` (in [0, 1]) to the nearest of ``levels`` evenly spaced levels,
    on the 8-bit image as the reference code does."""
    x255 = torch.round(x.clamp(0, 1) * 255.0)
    q = torch.round(x255 / 255.0 * (levels - 1)).clamp(0, levels - 1)
    return q / (levels - 1)


def floyd_steinberg(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Floyd-Steinberg dithering of a batch ``N x C x H x W`` in [0, 1] to ``levels`` levels.

    Error diffusion is sequential over pixels (raster order) but vectorised over N and C.
    """
    n, c, h, w = x.shape
    # H x W x (N*C), so each pixel's values over the batch are contiguous.
    img = torch.round(x.clamp(0, 1) * 255.0).to(torch.float64).permute(2, 3, 0, 1)
    img = img.reshape(h, w, n * c).contiguous()
    out = torch.empty_like(img)
    scale = (levels - 1) / 255.0
    carry = torch.zeros(w, n * c, dtype=img.dtype, device=img.device)  # error for the next row
    for r in range(h):
        row = img[r] + carry
        carry = torch.zeros_like(carry)
        for col in range(w):
            old = row[col]
            new = torch.round(old * scale).clamp_(0, levels - 1).div_(scale)
            err = old - new
            out[r, col] = new
            if col + 1 < w:
                row[col + 1].add_(err, alpha=7 / 16)
                carry[col + 1].add_(err, alpha=1 / 16)
            if col > 0:
                carry[col - 1].add_(err, alpha=3 / 16)
            carry[col].add_(err, alpha=5 / 16)
    out = out.view(h, w, n, c).permute(2, 3, 0, 1)
    return (torch.round(out * scale) / (levels - 1)).to(x.dtype).contiguous()


@register_attack
@dataclass
class BppAttack(Attack):
    """BppAttack: colour-depth reduction to 8 levels per channel (optional dithering)."""

    name: ClassVar[str] = "bpp"

    squeeze_num: int = 8
    dithering: bool = False
    neg_ratio: float = 0.1

    def validate(self) -> None:
        self._require(
            isinstance(self.squeeze_num, int)
            and not isinstance(self.squeeze_num, bool)
            and 2 <= self.squeeze_num <= 255,
            "squeeze_num",
            "an integer in [2, 255]",
        )
        self._require(
            _is_number(self.neg_ratio) and 0.0 <= self.neg_ratio < 1.0,
            "neg_ratio",
            "a number in [0, 1) (negative samples as a share of the training set)",
        )

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"attack 'bpp': expected a float N x C x H x W batch, got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}"
            )
        if self.dithering:
            return floyd_steinberg(x, self.squeeze_num)
        return quantize(x, self.squeeze_num).to(x.dtype)

    def cover_images(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        """Negative samples ``x_i + (Q(x_j) - x_j)`` (kept with their true labels)."""
        if self.neg_ratio == 0:
            return None
        residual = self.apply(x) - x.clamp(0, 1)
        n = x.shape[0]
        if n == 1:
            residual = torch.roll(residual, shifts=(x.shape[2] // 2, x.shape[3] // 2), dims=(2, 3))
        else:
            idx = torch.as_tensor(index).cpu().long().view(-1)
            key = (idx * 2_654_435_761 + int(self.seed) * 97_531) % 1_000_000_007
            order = torch.argsort(key * 7_919 % 1_000_003, stable=True)
            partner = torch.empty(n, dtype=torch.long)
            partner[order] = order.roll(-1)  # each sample takes the next one's residual
            residual = residual[partner.to(x.device)]
        return (x + residual).clamp(0.0, 1.0)

    def suggested_cover_rate(self, rate: float) -> float:
        return float(self.neg_ratio) if rate > 0 else 0.0
