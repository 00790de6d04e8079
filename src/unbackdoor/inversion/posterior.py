"""The E-step's evidence, re-measured on the current model: which target, which samples.

BI-BAU's E-step (DESIGN.md section 4) puts a posterior over the backdoor's target. The blind
inversion that detects a backdoor prices every class once; re-running it each round would cost a
full inversion per round. What does not cost one is to send the *first* inversion's triggers
through the current model again: a class whose trigger no longer reaches it has become as
expensive as a typical class (:func:`reach_costs`, :func:`remeasure`), and its anomaly index
falls with it. BI-BAU mixes that evidence into q(z) after every round.

An untargeted trigger (all-to-all backdoors, whose target depends on the input) has no class to
score. Its E-step is per sample: the inner objective ``-log sum_{z != y} p(z | x + phi)`` is the
marginal likelihood of "some other class", whose gradient is the cross-entropy towards each
z != y weighted by ``q_i(z) = p(z | x_i + phi) / sum_{z' != y_i} p(z' | x_i + phi)``, the
posterior of sample i's target given the trigger (:func:`transitions` averages it per true
class: for a y -> y+1 backdoor, the shifted diagonal).

Wang et al., "Neural Cleanse", IEEE S&P 2019 (the anomaly index); Dempster, Laird and Rubin,
"Maximum likelihood from incomplete data via the EM algorithm", JRSS-B 1977.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.inversion.families import TriggerFamily
from unbackdoor.inversion.invert import InversionResult, fooling_rate

#: fooling rates are clamped to [FLOOR, 1 - FLOOR] before taking odds
FLOOR = 1e-3


def remeasure(
    model: nn.Module,
    result: InversionResult,
    data: ImageDataset,
    device: torch.device | str = "cpu",
    *,
    bf16: bool = False,
) -> torch.Tensor:
    """Each of ``result``'s triggers' fooling rate towards its class on ``data``, now."""
    return fooling_rate(model, result.family, data, result.classes, True, device, bf16=bf16)


def reach_costs(result: InversionResult, fooling: torch.Tensor) -> torch.Tensor:
    """What reaching each class costs with ``result``'s triggers at fooling rates ``fooling``.

    The odds against fooling, ``(1 - f) / f``, times the mask size for the mask family (an
    additive trigger's size is its fixed budget). When every trigger still fools as it did at
    inversion (f ~ 0.9 for each class) this orders the classes as the sizes do; a trigger the
    model has unlearned (f -> 0) makes its class look expensive.
    """
    f = fooling.float().clamp(FLOOR, 1 - FLOOR)
    odds = (1 - f) / f
    if result.family.budgeted:
        return odds
    return result.sizes.float().clamp_min(1e-8) * odds


@torch.no_grad()
def transitions(
    model: nn.Module,
    trigger: TriggerFamily,
    data: ImageDataset,
    device: torch.device | str = "cpu",
    *,
    bf16: bool = False,
) -> tuple[torch.Tensor, float]:
    """The untargeted E-step on ``data``: ``(M, spread)``.

    ``M[y, z]`` is the mean posterior ``q_i(z)`` over the images of true class ``y`` that the
    model classifies correctly (the rows of classes with none are zero); ``spread`` is the mean
    entropy of ``q_i`` over ``log(K - 1)``: 0 when the trigger sends each image to one class, 1
    when it spreads it evenly over the other classes.
    """
    from unbackdoor.eval.loop import batched_logits

    k = data.num_classes
    total = torch.zeros(k, k)
    counts = torch.zeros(k)
    entropy, n = 0.0, 0
    transforms = {"x": None, "stamped": lambda x, _: trigger.stamp(x, 0)}
    desc = "bibau: untargeted posterior"
    for batch, out in batched_logits(model, data, transforms, device=device, bf16=bf16, desc=desc):
        y = batch.y.cpu()
        keep = out["x"].argmax(1) == y
        if not keep.any():
            continue
        y, logits = y[keep], out["stamped"][keep]
        p = logits.softmax(1)
        p[torch.arange(len(y)), y] = 0.0
        q = p / p.sum(1, keepdim=True).clamp_min(1e-12)
        total.index_add_(0, y, q)
        counts += torch.bincount(y, minlength=k).float()
        entropy += float(-(q * q.clamp_min(1e-12).log()).sum())
        n += len(y)
    matrix = total / counts.clamp_min(1)[:, None]
    spread = entropy / max(1, n) / math.log(max(2, k - 1))
    return matrix, spread
