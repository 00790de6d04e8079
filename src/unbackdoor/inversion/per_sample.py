"""Per-sample targeted triggers shared by the backdoored model and the model being purified.

A universal trigger (one mask or one perturbation for every image) is what the blind detection
needs: it is cheap to score per class, and a backdoor makes one class anomalously cheap to
reach. For unlearning, a universal trigger is also a narrow probe: once the model is trained
against it, a nearby trigger (the real blend, say) can still work. SAU (Wei et al., "Shared
Adversarial Unlearning", NeurIPS 2023, arXiv 2307.10562) unlearns per-sample adversarial
examples that fool the backdoored model and the purified one into the *same* class, which
approximate poisoned samples whatever the trigger's shape; it has no target and reaches every
class. Here the target ``z`` is known from the E-step, so each image gets its own L_inf
perturbation within ``eps`` that sends *both* models to ``z`` (projected signed-gradient
descent on the sum of their cross-entropies to ``z``, from a seeded uniform start), and
BI-BAU's M-step unlearns it with the image's true output beside the universal triggers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.utils.precision import autocast


def shared_targeted_pgd(
    model: nn.Module,
    reference: nn.Module,
    x: torch.Tensor,
    target: int,
    *,
    eps: float,
    steps: int = 5,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> tuple[torch.Tensor, float]:
    """Per-sample perturbed images ``x + delta`` (``|delta|_inf <= eps``, kept in [0, 1]) that
    push both ``model`` and ``reference`` towards class ``target``.

    Both networks are used as they are (put them in eval mode first: a training-mode network
    would move its BatchNorm statistics towards the perturbed images). Returns the images and
    the fraction of them that both networks assign to ``target`` (the shared rate).
    """
    if eps <= 0 or steps < 1:
        raise ValueError(
            f"shared_targeted_pgd: eps must be > 0 and steps >= 1 (got {eps}, {steps})"
        )
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    noise = torch.rand(x.shape, generator=generator).to(x.device)
    delta = ((2 * noise - 1) * eps).clamp(-x, 1 - x)
    y = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        with autocast(x.device, bf16):
            loss = F.cross_entropy(model(x + delta).float(), y) + F.cross_entropy(
                reference(x + delta).float(), y
            )
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() - alpha * grad.sign()).clamp(-eps, eps)
        delta = torch.max(torch.min(delta, 1 - x), -x)
    adv = (x + delta).detach()
    with torch.no_grad(), autocast(x.device, bf16):
        shared = (model(adv).argmax(1) == target) & (reference(adv).argmax(1) == target)
    return adv, float(shared.float().mean()) if len(shared) else 0.0
