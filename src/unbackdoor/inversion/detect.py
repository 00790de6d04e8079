"""Blind detection: does one class stand out as anomalously cheap to reach, and with which
family of trigger?

Shared by BI-BAU and TBAR's unknown-attack mode so that both see the same backdoor (or none).
Patches and blends are looked for first with a mask and pattern (Neural Cleanse: Wang et al.,
"Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", S&P 2019);
if no class stands out that way, with a bounded additive perturbation whose budget is scaled to
the model (:func:`~unbackdoor.inversion.invert_calibrated`): warps and invisible triggers,
which no small mask reproduces, are reached that way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.inversion.invert import (
    InversionConfig,
    InversionResult,
    Verdict,
    invert_calibrated,
)
from unbackdoor.utils.config import check_choice

FAMILY_CHOICES = ("auto", "mask_pattern", "additive")


@dataclass
class Detection:
    """The outcome of :func:`detect`: the deciding family's inversion and the verdicts."""

    result: InversionResult  # the inversion of the last family tried (the deciding one)
    family: str
    tried: list[str]
    verdict: Verdict | None  # None for an untargeted inversion (nothing to compare)
    verdicts: dict[str, dict[str, Any]]  # per family tried: its most anomalous class, tests
    results: dict[str, InversionResult]  # per family tried
    eps_trail: list[dict[str, float]]  # additive budgets tried

    @property
    def found(self) -> bool:
        return self.verdict is None or self.verdict.found


def detect(
    model: nn.Module,
    data: ImageDataset,
    config: InversionConfig,
    *,
    family: str = "auto",
    anomaly_threshold: float = 2.0,
    min_effect: float = 4.0,
    auto_eps: bool = True,
    stop_at_first: bool = False,
    invert_fn: Callable[..., InversionResult] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    desc: str = "blind inversion",
) -> Detection:
    """Invert per class with ``family`` (``"auto"``: mask and pattern, then additive while
    nothing is found) on the defender's clean ``data`` and judge the most anomalous class
    (:meth:`~unbackdoor.inversion.InversionResult.verdict`).

    ``config`` gives everything but the family; ``stop_at_first`` stops after the first family
    whatever it found (a target given by the user). ``invert_fn`` replaces
    :func:`~unbackdoor.inversion.invert` (tests script inversions with it).
    """
    check_choice("detect", "family", family, FAMILY_CHOICES)
    tried = ["mask_pattern", "additive"] if family == "auto" else [family]
    verdicts: dict[str, dict[str, Any]] = {}
    results: dict[str, InversionResult] = {}
    eps_trail: list[dict[str, float]] = []
    for fam in tried:
        res, trail = invert_calibrated(
            model,
            data,
            replace(config, family=fam),
            auto_eps=auto_eps and config.targeted,
            invert_fn=invert_fn,
            seed=seed,
            device=device,
            desc=f"{desc} ({fam})",
        )
        eps_trail += trail
        results[fam] = res
        verdict = res.verdict(anomaly_threshold, min_effect) if config.targeted else None
        if verdict is not None:
            verdicts[fam] = verdict.as_dict()
        if verdict is None or verdict.found or stop_at_first:
            break
    return Detection(res, fam, list(results), verdict, verdicts, results, eps_trail)
