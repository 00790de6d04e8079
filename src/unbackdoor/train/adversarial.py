"""Adversarial training loss: FGSM with a random start (Wong, Rice, Kolter, "Fast is better than
free: revisiting adversarial training", ICLR 2020, arXiv 2001.03994).

Why it is here: attacks that craft their poison against a clean model want a *robust* one. The
label-consistent attack (Turner et al. 2019) perturbs target-class images with PGD against an
adversarially trained model, so that the perturbations change what the images look like; against
a standard model the perturbations are non-robust features that the victim learns as a shortcut
for the target class, and the trigger is ignored (measured: ``benchmarks/attacks/cifar10.md``).

Each step draws ``delta`` uniformly in the L_inf ball of radius ``eps``, takes one signed-gradient
step of size ``step`` (the paper: ``1.25 * eps``), projects back onto the ball and the [0, 1]
pixel box, and returns the loss on the perturbed batch. Cost: about twice a standard step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.data.loader import Batch

FGSM_RS_STEP = 1.25  # step / eps, the paper's choice


def fgsm_rs_loss(eps: float, step: float = 0.0, label_smoothing: float = 0.0):
    """A training loss on FGSM-RS examples; ``eps`` and ``step`` in [0, 1] pixel units."""
    step = step or FGSM_RS_STEP * eps

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch.x, batch.y
        delta = torch.empty_like(x).uniform_(-eps, eps)
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
        x_adv = (x + delta).clamp(0, 1)
        return F.cross_entropy(model(x_adv), y, label_smoothing=label_smoothing)

    return loss
