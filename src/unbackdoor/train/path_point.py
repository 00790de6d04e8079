"""Gradients taken on the path back to the backdoored model (Path-Aware Minimization).

Min et al., "Uncovering, Explaining, and Mitigating the Superficial Safety of Backdoor
Defense" (NeurIPS 2024, arXiv 2410.09838) find that purified models whose backdoor returns
after brief fine-tuning stay close to the backdoored model along the path between the two,
and that taking each unlearning gradient at a point moved towards the backdoored weights,
then applying it at the current ones (their PAM), drives the model further along that path,
out of the backdoor's reach. :func:`toward` moves the parameters for the forward and backward
pass and puts them back before the optimiser steps. The paper's step is an absolute L2 distance
(0.5, on ResNet-18); here it is a fraction of the current distance, which carries over between
networks of different sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def toward(model: nn.Module, anchor: nn.Module, fraction: float) -> Iterator[None]:
    """Within the block, every parameter ``p`` of ``model`` is ``p + fraction * (a - p)``, with
    ``a`` the matching parameter of ``anchor``; afterwards exactly ``p`` again (the gradients
    computed inside stay). Buffers (BatchNorm statistics) are not moved. ``fraction`` 0: no-op.
    """
    if not fraction:
        yield
        return
    if not 0 < fraction < 1:
        raise ValueError(f"toward: fraction must be in [0, 1), got {fraction}")
    params = list(model.named_parameters())
    anchors = dict(anchor.named_parameters())
    for name, p in params:
        if name not in anchors or anchors[name].shape != p.shape:
            raise ValueError(
                f"toward: the anchor model has no parameter {name!r} of shape {tuple(p.shape)}"
            )
    saved = [p.detach().clone() for _, p in params]
    with torch.no_grad():
        for name, p in params:
            p.add_(anchors[name].detach().to(p.dtype) - p, alpha=fraction)
    try:
        yield
    finally:
        with torch.no_grad():
            for (_, p), s in zip(params, saved, strict=True):
                p.copy_(s)
