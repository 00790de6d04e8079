"""Trigger reverse-engineering shared by BI-BAU, Neural Cleanse and TBAR's unknown-attack mode."""

from unbackdoor.inversion.families import FAMILIES, Additive, MaskPattern, TriggerFamily
from unbackdoor.inversion.invert import (
    InversionConfig,
    InversionResult,
    Verdict,
    fooling_rate,
    invert,
    mad_anomaly,
)

__all__ = [
    "FAMILIES",
    "Additive",
    "MaskPattern",
    "TriggerFamily",
    "InversionConfig",
    "InversionResult",
    "Verdict",
    "invert",
    "fooling_rate",
    "mad_anomaly",
]
