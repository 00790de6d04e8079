"""Per-image smooth perturbations that move a model's inner features the most.

On a low-frequency backdoor (LF: Zeng et al., "Rethinking the Backdoor Attacks' Triggers: A
Frequency Perspective", ICCV 2021) unlearning at the output only hides the trigger: its
representation survives in the early layers and a few poisoned images reconnect it. Pulling the
stamped images' inner activations onto the clean ones' makes it forgotten, but only with the
true trigger (``benchmarks/bibau_dev``, session 40: a dev LF model re-tuned to its floor with
it, and back to 63% with BI-BAU's one inverted smooth trigger). Without the trigger, the
features can be made blind to the whole small ball of smooth perturbations instead, as
adversarial training does for a norm ball (Madry et al., ICLR 2018): each image gets its own
perturbation from the smooth family's lattice (:class:`~unbackdoor.inversion.families.Smooth`),
found by a few projected signed-gradient steps that *maximise* how far the tapped layers move
(:func:`~unbackdoor.models.taps.relative_gap`); no target and no label is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.models.taps import LayerTaps, relative_gap
from unbackdoor.utils.precision import autocast


def smooth_feature_pgd(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    grid: int = 4,
    steps: int = 3,
    layers: Sequence[str] | None = None,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """``clamp(x + delta, 0, 1)`` with, per image, ``delta`` upsampled (bicubic, clamped to
    ``eps``) from a ``grid`` x ``grid`` lattice per channel, ``|lattice|_inf <= eps``, that moves
    the tapped ``layers`` (:func:`~unbackdoor.models.taps.feature_layer_names`) furthest from
    their clean values. Starts at random corners of the lattice's box and takes ``steps``
    signed-gradient steps of ``step_size`` (default ``eps / 2``).

    ``model`` is used as it is: put it in eval mode first (a training-mode network would move
    its BatchNorm statistics towards the perturbed images).
    """
    if eps <= 0 or steps < 0 or grid < 2:
        raise ValueError(
            f"smooth_feature_pgd: needs eps > 0, steps >= 0 and grid >= 2 "
            f"(got {eps}, {steps}, {grid})"
        )
    alpha = step_size if step_size is not None else eps / 2
    hw = tuple(x.shape[-2:])

    def up(c: torch.Tensor) -> torch.Tensor:
        return F.interpolate(c, size=hw, mode="bicubic", align_corners=True).clamp(-eps, eps)

    shape = (x.shape[0], x.shape[1], grid, grid)
    corners = torch.randint(0, 2, shape, generator=generator).float()
    c = (eps * (2 * corners - 1)).to(x.device, x.dtype)
    with LayerTaps(model, layers) as taps:
        with torch.no_grad(), autocast(x.device, bf16):
            model(x)
        clean = [v.float() for v in taps.values]
        for _ in range(steps):
            c = c.detach().requires_grad_(True)
            with autocast(x.device, bf16):
                model((x + up(c)).clamp(0, 1))
            gap = sum(relative_gap(a, b) for a, b in zip(taps.values, clean, strict=True))
            (grad,) = torch.autograd.grad(gap, c)
            c = (c + alpha * grad.sign()).clamp(-eps, eps)
    return (x + up(c.detach())).clamp(0, 1)
