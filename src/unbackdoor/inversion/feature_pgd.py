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
:func:`smooth_targeted_pgd` searches the same ball for what sends the backdoored model to the
found target instead: a per-image stand-in for the trigger itself, in the spirit of SAU's
shared adversarial examples (Wei et al., NeurIPS 2023), restricted to smooth perturbations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    _check_ball(eps, grid, steps)
    with LayerTaps(model, layers) as taps:
        with torch.no_grad(), autocast(x.device, bf16):
            model(x)
        clean = [v.float() for v in taps.values]

        def moved(xp: torch.Tensor) -> torch.Tensor:
            with autocast(x.device, bf16):
                model(xp)
            return sum(relative_gap(a, b) for a, b in zip(taps.values, clean, strict=True))

        return _lattice_ascent(x, moved, eps, grid, steps, step_size, generator)


def smooth_targeted_pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    *,
    eps: float,
    grid: int = 4,
    steps: int = 3,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """The same smooth ball as :func:`smooth_feature_pgd`, searched for what ``model`` calls
    ``target`` most (the mean log-probability of ``target``).

    On the backdoored model, per image, this is a stand-in for a low-frequency trigger itself
    (what sends that image to the found target), where :func:`smooth_feature_pgd` takes
    whatever moves the features, backdoor or not.
    """
    _check_ball(eps, grid, steps)
    if target < 0:
        raise ValueError(f"smooth_targeted_pgd: target must be a class index >= 0, got {target}")

    def to_target(xp: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, bf16):
            logits = model(xp).float()
        if target >= logits.shape[1]:
            raise ValueError(
                f"smooth_targeted_pgd: target {target} is not a class of a "
                f"{logits.shape[1]}-class model"
            )
        return F.log_softmax(logits, 1)[:, target].sum()

    return _lattice_ascent(x, to_target, eps, grid, steps, step_size, generator)


def _check_ball(eps: float, grid: int, steps: int) -> None:
    """Both searches' arguments, checked before any forward pass."""
    if eps <= 0 or steps < 0 or grid < 2:
        raise ValueError(
            f"smooth perturbation search: needs eps > 0, steps >= 0 and grid >= 2 "
            f"(got {eps}, {steps}, {grid})"
        )


def _lattice_ascent(
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    eps: float,
    grid: int,
    steps: int,
    step_size: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Signed-gradient ascent of ``objective(perturbed images)`` over per-image smooth
    perturbations (the lattice described in :func:`smooth_feature_pgd`)."""
    alpha = step_size if step_size is not None else eps / 2
    hw = tuple(x.shape[-2:])

    def up(c: torch.Tensor) -> torch.Tensor:
        return F.interpolate(c, size=hw, mode="bicubic", align_corners=True).clamp(-eps, eps)

    shape = (x.shape[0], x.shape[1], grid, grid)
    corners = torch.randint(0, 2, shape, generator=generator).float()
    c = (eps * (2 * corners - 1)).to(x.device, x.dtype)
    for _ in range(steps):
        c = c.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective((x + up(c)).clamp(0, 1)), c)
        c = (c + alpha * grad.sign()).clamp(-eps, eps)
    return (x + up(c.detach())).clamp(0, 1)
