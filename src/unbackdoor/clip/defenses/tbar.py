"""TBAR for CLIP: negate a trigger vector of the image encoder under a frozen zero-shot head.

TBAR (arXiv 2510.14845) was built for multimodal contrastive models. As DESIGN.md section 4
specifies, the image encoder is fine-tuned briefly on the defender's stamped images (the known
trigger, or one reverse-engineered against the zero-shot head) labelled with the target class,
under a *frozen* zero-shot head made of class prompts; the trigger vector covers the image
tower's parameters only, and alpha is chosen on held-out clean data. Everything else is the
classifier TBAR of :mod:`unbackdoor.defenses.tbar`, applied to the
:class:`~unbackdoor.clip.zeroshot.ZeroShotClassifier`, whose ``clip.*`` parameters are the CLIP
model's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from unbackdoor.clip.defenses.common import FrozenText, as_pairs, head, require_clip
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.defenses.base import DefenseOutput
from unbackdoor.defenses.registry import register_defense
from unbackdoor.defenses.tbar import TBAR


@register_defense
@dataclass
class ClipTBAR(TBAR):
    """TBAR on a CLIP model's image encoder under a frozen zero-shot head."""

    name: ClassVar[str] = "clip-tbar"

    templates: list[str] | None = None
    # TBAR as published: no projection, no recalibration (the zero-shot head has no bias to
    # re-fit); both can still be asked for
    clean_projection: str | bool = False
    recalibrate: str = "none"
    # the finer alpha search was adopted on classifiers (benchmarks/tbar); CLIP's rows
    # (benchmarks/clip) were measured on the grid, so it stays off here until measured
    refine_smallest: bool = False
    # the benchmarked CLIP rows ran with the prior; without it has not been measured there
    budget_prior: bool = True
    # the classifier's effect-size path of detection (session 29) has not been measured on CLIP
    strong_effect: float | None = None
    # nor its minimum fooling for the budgeted families (session 30)
    min_fooling: float = 0.0

    def validate(self) -> None:
        super().validate()
        self._require(self.params == "all", "params", "'all' (the image tower, for CLIP)")
        self._require(
            "bias" not in str(self.recalibrate),
            "recalibrate",
            "no bias re-fit for CLIP (the zero-shot head is frozen)",
        )

    def key_filter(self, model: nn.Module) -> Callable[[str], bool] | None:
        keys = model.image_param_keys()  # the head's image-tower parameter names
        return lambda k: k in keys

    def run(
        self, model: nn.Module, clean: ImageDataset, val: ImageDataset, *, known_attack: Any = None
    ) -> DefenseOutput:
        clip = require_clip(model, self.name)
        zs = head(clip, clean, self.templates)
        with FrozenText(clip):  # the fine-tunes and the repair move the image tower only
            out = super().run(
                zs, as_pairs(clean, self.seed).images_only(), val, known_attack=known_attack
            )
        out.model = clip
        out.diagnostics["head"] = {"classes": zs.class_names, "templates": zs.templates}
        return out
