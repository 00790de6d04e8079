"""Backdoor metrics, the same for every method (DESIGN.md section 4).

- CA, clean accuracy on the test set;
- ASR, the share of triggered test images *whose attack label differs from their true label*
  (all-to-one: true class not the target) classified as the attack label;
- RA, accuracy of those triggered images against their true labels;
- DER, the defense effectiveness rate of BackdoorBench (Wu et al., NeurIPS 2022):
  ``(max(0, ASR_b - ASR_a) - max(0, CA_b - CA_a) + 1) / 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import DataError
from unbackdoor.eval.loop import Transform, batched_logits


@dataclass
class Metrics:
    """Fractions in [0, 1]; ``asr``/``robust_acc`` are ``None`` when no trigger was evaluated."""

    clean_acc: float
    asr: float | None = None
    robust_acc: float | None = None
    n_clean: int = 0
    n_triggered: int = 0

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def evaluate(
    model: nn.Module,
    data: ImageDataset,
    *,
    trigger: Transform | None = None,
    attack_labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    bf16: bool = False,
) -> Metrics:
    """CA on ``data``; with ``trigger`` and ``attack_labels`` (true -> attack labels), ASR and RA.

    ``trigger(x, index)`` maps a float batch in [0, 1] to its triggered version.
    """
    if len(data) == 0:
        raise DataError(f"{data.name}: cannot evaluate on an empty data set")
    spec = getattr(model, "spec", None)
    if spec is not None and spec.num_classes != data.num_classes:
        raise DataError(
            f"{data.name}: {data.num_classes} classes but the model has {spec.num_classes}"
        )
    if (trigger is None) != (attack_labels is None):
        raise ValueError("trigger and attack_labels must be given together")
    transforms: dict[str, Transform | None] = {"clean": None}
    if trigger is not None:
        transforms["triggered"] = trigger
    correct = hits = robust = counted = 0
    for batch, out in batched_logits(
        model, data, transforms, batch_size=batch_size, device=device, bf16=bf16
    ):
        y = batch.y.cpu()
        correct += int((out["clean"].argmax(1) == y).sum())
        if trigger is not None:
            target = attack_labels(y)
            keep = target != y
            pred = out["triggered"].argmax(1)[keep]
            hits += int((pred == target[keep]).sum())
            robust += int((pred == y[keep]).sum())
            counted += int(keep.sum())
    m = Metrics(clean_acc=correct / len(data), n_clean=len(data))
    if trigger is not None:
        m.asr = hits / counted if counted else 0.0
        m.robust_acc = robust / counted if counted else 0.0
        m.n_triggered = counted
    return m


def defense_effectiveness_rate(
    asr_before: float, asr_after: float, ca_before: float, ca_after: float
) -> float:
    """DER in [0, 1]: 1 means the ASR fell to zero at no accuracy cost, 0.5 means no change."""
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1.0) / 2.0
