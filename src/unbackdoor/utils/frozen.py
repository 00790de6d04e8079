"""A model held still while something else is optimised against it (a trigger, a perturbation).

Inverting a trigger needs the model in eval mode with no parameter gradients; afterwards the
model must be exactly as it was: a parameter its owner froze (a CLIP tower's pretrained trunk)
stays frozen, a trainable one trainable, also when the optimisation raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad`` off; restore both flags on exit."""
    was_training = {m: m.training for m in model.modules()}
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, flag in was_training.items():
            m.training = flag
