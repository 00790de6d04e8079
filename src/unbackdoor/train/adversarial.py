"""Adversarial training loss: FGSM with a random start (Wong, Rice, Kolter, "Fast is better than
free: revisiting adversarial training", ICLR 2020, arXiv 2001.03994), or PGD with ``steps`` steps
(Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018).

Why it is here: attacks that craft their poison against a clean model want a *robust* one. The
label-consistent attack (Turner et al. 2019) perturbs target-class images with PGD against an
adversarially trained model, so that the perturbations change what the images look like; against
a standard model the perturbations are non-robust features that the victim learns as a shortcut
for the target class, and the trigger is ignored (measured: ``benchmarks/attacks/cifar10.md``).

Each step draws ``delta`` uniformly in the L_inf ball of radius ``eps``, takes ``steps``
signed-gradient steps of size ``step`` (FGSM-RS, one step: ``1.25 * eps``; PGD: ``2.5 * eps /
steps``), each projected back onto the ball and the [0, 1] pixel box, and returns the loss on the
perturbed batch. Cost: about ``steps + 1`` standard steps.

Measured with the fast net's 12-epoch recipe on CIFAR-10 (lr 1.5, batch 1024): FGSM-RS
overfits catastrophically, as Wong et al. warn it can: at eps 8/255 the model ended at 30%
clean accuracy, at 4/255 at 65%, both with 0% accuracy under a 10-step PGD attack at their own
radius. Multi-step PGD (``steps`` >= 2) is the usual remedy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.data.loader import Batch

FGSM_RS_STEP = 1.25  # step / eps for one step, Wong et al.'s choice
PGD_STEP = 2.5  # step * steps / eps for several steps, Madry et al.'s


def adversarial_loss(eps: float, step: float = 0.0, steps: int = 1, label_smoothing: float = 0.0):
    """A training loss on FGSM-RS (``steps=1``) or PGD examples; ``eps``, ``step`` in [0, 1]."""
    step = step or (FGSM_RS_STEP * eps if steps == 1 else PGD_STEP * eps / steps)

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch.x, batch.y
        delta = torch.empty_like(x).uniform_(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        return F.cross_entropy(model(x + delta), y, label_smoothing=label_smoothing)

    return loss
