"""The zero-shot classifier: a CLIP image tower under a frozen head of class-prompt embeddings.

``logits = exp(logit_scale) * cos(image, w_k)`` with ``w_k`` the normalised mean of the class
prompts' text embeddings (CLIP's prompt ensembles, Radford et al., ICML 2021). It is an ordinary
image classifier, so the project's evaluation (:func:`unbackdoor.eval.metrics.evaluate`), the
trigger inversion and TBAR apply to CLIP models unchanged; ``clip.*`` parameters are the wrapped
model's own, so edits to them edit the CLIP model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.zeroshot.templates import CLASS_TEMPLATES, fill, readable_class_names
from unbackdoor.errors import ConfigError


@torch.no_grad()
def class_text_weights(
    model: ClipModel, class_names: Sequence[str], templates: Sequence[str] = CLASS_TEMPLATES
) -> torch.Tensor:
    """K x D: per class, the normalised mean of its normalised prompt embeddings."""
    if not class_names:
        raise ConfigError("zero-shot classification needs at least one class name")
    if not templates:
        raise ConfigError("zero-shot classification needs at least one prompt template")
    was = model.training
    model.eval()
    names = readable_class_names(class_names)
    prompts = [p for n in names for p in fill(templates, n)]
    emb = F.normalize(model.encode_texts(prompts).float(), dim=-1)
    emb = emb.view(len(names), len(templates), -1).mean(1)
    model.train(was)
    return F.normalize(emb, dim=-1)


class ZeroShotClassifier(nn.Module):
    """Images in [0, 1] -> class logits, through ``clip.encode_image`` and a fixed text head."""

    def __init__(
        self,
        clip: ClipModel,
        class_names: Sequence[str],
        templates: Sequence[str] = CLASS_TEMPLATES,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.class_names = list(class_names)
        self.templates = list(templates)
        self.register_buffer(
            "text_weights",
            class_text_weights(clip, self.class_names, self.templates),
            persistent=False,
        )

    def refresh(self) -> None:
        """Recompute the text head (after the text tower changed)."""
        self.text_weights = class_text_weights(self.clip, self.class_names, self.templates).to(
            self.text_weights.device
        )

    def image_param_keys(self) -> set[str]:
        """Names (in this module) of the image tower's parameters."""
        pre = tuple("clip." + p for p in self.clip.image_prefixes())
        return {n for n, _ in self.named_parameters() if n.startswith(pre)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.clip.encode_image(x).float(), dim=-1)
        return self.clip.logit_scale.exp().float() * img @ self.text_weights.t()


def zero_shot_classifier(
    clip: ClipModel,
    class_names: Sequence[str],
    templates: Sequence[str] | None = None,
) -> ZeroShotClassifier:
    """A :class:`ZeroShotClassifier` with ``templates`` (default :data:`CLASS_TEMPLATES`)."""
    return ZeroShotClassifier(clip, class_names, templates or CLASS_TEMPLATES)
