"""Blind detection: does one class stand out as anomalously cheap to reach, and with which
family of trigger?

Shared by BI-BAU and TBAR's unknown-attack mode so that both see the same backdoor (or none).
Patches and blends are looked for first with a mask and pattern (Neural Cleanse: Wang et al.,
"Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", S&P 2019);
if no class stands out that way, with a bounded additive perturbation whose budget is scaled to
the model (:func:`~unbackdoor.inversion.invert_calibrated`): invisible triggers, which no small
mask reproduces, are reached that way; then, where asked, with a smooth warp of a few pixels at
most (WaNet's family, which neither of the others reproduces on CIFAR-10,
``benchmarks/bibau_dev``). With ``compare_budgeted`` the budgeted families (additive, warp) are
all tried once the mask family has not flagged, and the one whose flagged class stands out most
decides: a natural additive shortcut can flag a wrong class on a WaNet model before the warp
family, which finds the backdoor, is tried (``benchmarks/bibau_dev``, session 37).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.inversion.families import FAMILIES
from unbackdoor.inversion.invert import (
    InversionConfig,
    InversionResult,
    Verdict,
    inversion_config,
    invert_calibrated,
)
from unbackdoor.utils.config import check_choice

FAMILY_CHOICES = ("auto", "mask_pattern", "additive", "smooth", "warp")
#: the families ``family="auto"`` tries, in order, while none finds a backdoor
AUTO_FAMILIES = ("mask_pattern", "additive")
#: the default ``strong_effect`` of the defenses that detect blindly (BI-BAU, TBAR): a class at
#: least this many times cheaper than the median class that fools half the images is found
#: whatever its index. Chosen by a rule on MNIST dev twins (``benchmarks/bibau_dev``, session
#: 29): it found two of three Blended twins the index missed at 500 images, and no clean twin's
#: class met it (largest effect 169x, but at 1.7% fooling)
STRONG_EFFECT = 200.0
#: the default ``min_fooling`` of the defenses that detect blindly: the share of the defender's
#: images a budgeted family's (additive, warp) flagged class must fool (masks: half). Chosen by
#: a rule on MNIST dev twins (``benchmarks/bibau_dev``, session 30): with 500 images the index
#: flagged a class fooling 1-4% on five of six clean twins (the median class's odds sit at the
#: clamp, the MAD at zero); targets fooled 37-99%. At 0.2 no clean twin was flagged and no
#: target lost
MIN_FOOLING = 0.2


@dataclass
class Detection:
    """The outcome of :func:`detect`: the deciding family's inversion and the verdicts."""

    result: InversionResult  # the inversion of the last family tried (the deciding one)
    family: str
    tried: list[str]
    verdict: Verdict | None  # None for an untargeted inversion (nothing to compare)
    verdicts: dict[str, dict[str, Any]]  # per family tried: its most anomalous class, tests
    results: dict[str, InversionResult]  # per family tried
    eps_trail: list[dict[str, float]]  # budgets tried (additive "eps", warp "warp_shift")

    @property
    def found(self) -> bool:
        return self.verdict is None or self.verdict.found


def detect(
    model: nn.Module,
    data: ImageDataset,
    config: InversionConfig,
    *,
    family: str = "auto",
    auto_families: tuple[str, ...] = AUTO_FAMILIES,
    anomaly_threshold: float = 2.0,
    min_effect: float = 4.0,
    strong_effect: float | None = None,
    min_fooling: float = 0.0,
    auto_eps: bool = True,
    stop_at_first: bool = False,
    compare_budgeted: bool = False,
    invert_fn: Callable[..., InversionResult] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    desc: str = "blind inversion",
) -> Detection:
    """Invert per class with ``family`` (``"auto"``: each of ``auto_families`` in turn while
    nothing is found) on the defender's clean ``data`` and judge the most anomalous class
    (:meth:`~unbackdoor.inversion.InversionResult.verdict`).

    ``config`` gives everything but the family; ``stop_at_first`` stops after the first family
    whatever it found (a target given by the user). ``compare_budgeted``: a budgeted family
    (additive, warp) that flags a class does not stop the search; of the budgeted families that
    flag one, the one with the largest anomaly index decides (the index, not the effect size,
    which runs to 10^5 and more whenever the median class's odds sit at the clamp, so effects do
    not compare across families). ``invert_fn`` replaces
    :func:`~unbackdoor.inversion.invert` (tests script inversions with it).
    """
    check_choice("detect", "family", family, FAMILY_CHOICES)
    for fam in auto_families:
        check_choice("detect", "auto_families", fam, FAMILY_CHOICES[1:])
    tried = list(auto_families) if family == "auto" else [family]
    verdicts: dict[str, dict[str, Any]] = {}
    verdict_of: dict[str, Verdict] = {}
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
        verdict = (
            res.verdict(anomaly_threshold, min_effect, strong_effect, min_fooling)
            if config.targeted
            else None
        )
        if verdict is None:
            break
        verdict_of[fam] = verdict
        verdicts[fam] = verdict.as_dict()
        if stop_at_first or (verdict.found and not (compare_budgeted and FAMILIES[fam].budgeted)):
            break
    flagged = [f for f, v in verdict_of.items() if v.found]
    if compare_budgeted and flagged:
        fam = max(flagged, key=lambda f: verdict_of[f].anomaly)
        res, verdict = results[fam], verdict_of[fam]
    return Detection(res, fam, list(results), verdict, verdicts, results, eps_trail)


class DetectionSettings(Protocol):
    """What a defense that detects blindly (BI-BAU, TBAR's unknown attack) names its settings."""

    inversion_steps: int
    additive_eps: float
    warp_shift: float | None
    bf16: bool
    budget_prior: bool
    inversion_batch_size: int | None
    family: str
    anomaly_threshold: float
    min_effect: float
    strong_effect: float | None
    min_fooling: float
    compare_families: bool


def detection_checks(settings: DetectionSettings) -> list[tuple[bool, str, str]]:
    """The validity of the thresholds every defense that detects blindly shares, as
    ``(ok, option, expected)`` for the defense's own validation."""
    s = settings
    return [
        (s.anomaly_threshold > 0, "anomaly_threshold", "> 0"),
        (s.min_effect >= 1, "min_effect", ">= 1"),
        (
            s.strong_effect is None or s.strong_effect >= s.min_effect,
            "strong_effect",
            "None or >= min_effect",
        ),
        (0 <= s.min_fooling <= 1, "min_fooling", "in [0, 1]"),
    ]


def detect_with(
    settings: DetectionSettings,
    model: nn.Module,
    data: ImageDataset,
    *,
    targeted: bool = True,
    families: tuple[str, ...] | None = None,
    **kwargs: Any,
) -> Detection:
    """:func:`detect` with a defense's own settings, so that BI-BAU and TBAR look for a backdoor
    the same way: the warp family is tried last when ``warp_shift`` is set, and with
    ``compare_families`` every budgeted family is tried and compared. ``families``
    replaces the families tried (None: the defense's ``family``, and with ``"auto"`` the
    families it tries). ``kwargs`` go to :func:`detect` (``invert_fn``, ``seed``, ``device``,
    ``desc``, ...)."""
    config = inversion_config(
        settings.inversion_batch_size,
        steps=settings.inversion_steps,
        targeted=targeted,
        eps=settings.additive_eps,
        warp_shift=settings.warp_shift or 1.0,
        bf16=settings.bf16,
        budget_prior=settings.budget_prior,
    )
    return detect(
        model,
        data,
        config,
        family=settings.family if families is None else "auto",
        auto_families=families or AUTO_FAMILIES + (("warp",) if settings.warp_shift else ()),
        anomaly_threshold=settings.anomaly_threshold,
        min_effect=settings.min_effect,
        strong_effect=settings.strong_effect,
        min_fooling=settings.min_fooling,
        compare_budgeted=settings.compare_families,
        **kwargs,
    )
