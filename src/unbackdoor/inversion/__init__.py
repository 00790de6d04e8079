"""Trigger reverse-engineering shared by BI-BAU, Neural Cleanse and TBAR's unknown-attack mode."""

from unbackdoor.inversion.detect import FAMILY_CHOICES, Detection, detect, detect_with
from unbackdoor.inversion.families import (
    FAMILIES,
    Additive,
    MaskPattern,
    Smooth,
    TriggerFamily,
    Warp,
)
from unbackdoor.inversion.invert import (
    InversionConfig,
    InversionResult,
    Verdict,
    fooling_rate,
    inversion_config,
    invert,
    invert_calibrated,
    mad_anomaly,
)
from unbackdoor.inversion.posterior import reach_costs, remeasure, transitions

__all__ = [
    "FAMILY_CHOICES",
    "Detection",
    "detect",
    "detect_with",
    "FAMILIES",
    "Additive",
    "MaskPattern",
    "Smooth",
    "TriggerFamily",
    "Warp",
    "InversionConfig",
    "InversionResult",
    "Verdict",
    "invert",
    "invert_calibrated",
    "inversion_config",
    "fooling_rate",
    "mad_anomaly",
    "reach_costs",
    "remeasure",
    "transitions",
]
