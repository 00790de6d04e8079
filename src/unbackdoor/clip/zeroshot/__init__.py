"""Zero-shot classification from class prompts (prompt ensembles)."""

from unbackdoor.clip.zeroshot.head import (
    ZeroShotClassifier,
    class_text_weights,
    zero_shot_classifier,
)
from unbackdoor.clip.zeroshot.templates import (
    CAPTION_TEMPLATES,
    CLASS_TEMPLATES,
    fill,
    readable_class_names,
)

__all__ = [
    "ZeroShotClassifier",
    "class_text_weights",
    "zero_shot_classifier",
    "CAPTION_TEMPLATES",
    "CLASS_TEMPLATES",
    "fill",
    "readable_class_names",
]
