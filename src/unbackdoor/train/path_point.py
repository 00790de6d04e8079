"""Gradients taken on the path back to the backdoored model (Path-Aware Minimization).

Min et al., "Uncovering, Explaining, and Mitigating the Superficial Safety of Backdoor
Defense" (NeurIPS 2024, arXiv 2410.09838) find that purified models whose backdoor returns
after brief fine-tuning stay close to the backdoored model along the path between the two,
and that taking each unlearning gradient at a point moved towards the backdoored weights,
then applying it at the current ones (their PAM), drives the model further along that path,
out of the backdoor's reach. :func:`toward` moves the parameters for the forward and backward
pass and puts them back before the optimiser steps. The paper's step is an absolute L2
distance (0.5, on ResNet-18); here it is a fraction of the current distance, which carries over
between networks of different sizes.

:func:`after_attacker` gives another such point: where a simulated re-tuning attacker's few
steps take the model (first order, after Tamirisa et al., "Tamper-Resistant Safeguards for
Open-Weight LLMs", 2024).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.utils.precision import autocast


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


def after_attacker(
    model: nn.Module,
    attacker: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    lr: float,
    bf16: bool = False,
) -> dict[str, torch.Tensor]:
    """``model``'s parameters moved to where ``steps`` Adam steps (``lr``) of cross-entropy on
    ``(x, labels)`` take a copy of it, for :func:`torch.func.functional_call`: each is
    ``p + (q - p).detach()``, so a loss computed there has its gradient applied to ``p`` (first
    order: the attacker's move is a constant). ``attacker`` is a module of the same
    architecture, reloaded from ``model`` here, trained in training mode, left at ``q``."""
    attacker.load_state_dict(model.state_dict())
    attacker.train()  # as a re-tuning attacker trains, whatever the caller freezes
    opt = torch.optim.Adam(attacker.parameters(), lr=lr)
    for _ in range(steps):
        with autocast(x.device, bf16):
            loss = F.cross_entropy(attacker(x).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    moved = dict(attacker.named_parameters())
    return {n: p + (moved[n] - p).detach() for n, p in model.named_parameters()}
