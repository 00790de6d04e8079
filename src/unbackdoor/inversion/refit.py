"""Re-fit a mask trigger's pattern on another model, the mask's place kept.

Why: on a model whose clean features offer natural shortcuts (a CLIP image tower pretrained on
ImageNet), a blind mask inversion finds a natural patch for every class and misses the backdoor.
On the *collapsed copy* of :mod:`unbackdoor.inversion.collapse` (clean task unlearned by gradient
ascent) the shortcuts are gone and the mask lands on the planted patch, but its pattern is fitted
to the copy and barely moves the model itself (10.6% of held-out pairs on the 96 px BadNets CLIP
model, ``benchmarks/clip/collapse_probe.json``). Keeping the mask's place, grown by a pixel to
forgive its edge, and re-optimising only the pattern against the model gives a trigger that does
(58.9% there): what BI-BAU then unlearns (its ``collapse_refit_steps`` option).

The same operation, with nothing grown, is the M-step inner of that path: the pattern re-fitted
on the current model inside the fixed place says whether the backdoor still answers there.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import endless
from unbackdoor.errors import ConfigError
from unbackdoor.inversion.families import MaskPattern
from unbackdoor.utils.precision import autocast
from unbackdoor.utils.progress import progress


def grow_mask(family: MaskPattern, pixels: int) -> None:
    """Dilate every mask of ``family`` by ``pixels`` in place (a max filter over the mask)."""
    if pixels <= 0:
        return
    with torch.no_grad():
        m = F.max_pool2d(family.mask, 2 * pixels + 1, stride=1, padding=pixels)
        m = m.clamp(1e-4, 1 - 1e-4)
        family.mask_logit.copy_(torch.log(m) - torch.log1p(-m))


def refit_pattern(
    model: nn.Module,
    data: ImageDataset,
    family: MaskPattern,
    target: int,
    steps: int,
    *,
    grow: int = 0,
    batch_size: int = 16,
    lr: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    desc: str | None = None,
) -> MaskPattern:
    """A copy of one-trigger ``family`` whose mask (grown by ``grow`` pixels) stays fixed and
    whose pattern is optimised for ``steps`` Adam steps so that ``model`` sends the stamped
    images of the other classes of ``data`` to ``target``. ``model`` is left as it was (its
    parameters' ``requires_grad`` and mode restored)."""
    if not isinstance(family, MaskPattern) or family.mask_logit.shape[0] != 1:
        raise ConfigError("refit_pattern needs a one-trigger mask_pattern family")
    if steps < 1:
        raise ConfigError(f"refit_pattern: steps={steps} is invalid; expected >= 1")
    if not 0 <= target < data.num_classes:
        raise ConfigError(f"refit_pattern: target={target} is not a class of {data.name}")
    if not bool((data.labels != target).any()):
        raise ConfigError(f"refit_pattern: {data.name} has no image outside class {target}")
    fam = copy.deepcopy(family).to(device)
    grow_mask(fam, grow)
    fam.mask_logit.requires_grad_(False)
    fam.pattern_logit.requires_grad_(True)
    opt = torch.optim.Adam([fam.pattern_logit], lr=lr)
    was_training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)  # only the pattern learns
    bar = progress(range(steps), desc=desc or "refit pattern", enabled=desc is not None)
    batches = endless(data, batch_size, seed=seed, device=device)
    try:
        for _ in bar:
            x = torch.empty(0)
            while len(x) == 0:  # a batch of the target class alone teaches nothing
                batch = next(batches)
                x = batch.x[batch.y != target]
            with autocast(device, bf16):
                logits = model(fam.stamp(x, 0))
            y = torch.full((len(x),), target, device=logits.device)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    fam.pattern_logit.requires_grad_(False)
    return fam
