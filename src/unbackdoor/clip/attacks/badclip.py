"""BadCLIP's optimised patch: a trigger that already points at the target text.

Liang, Zhu, Liang, Wu, Cao, "BadCLIP: Dual-Embedding Guided Backdoor Attack on Multimodal
Contrastive Learning" (CVPR 2024, arXiv 2311.12075). The patch is optimised against a clean
CLIP model so that patched images embed close to the target's text embedding (the textual
guidance) and to the mean embedding of target-class images (the visual guidance); because the
clean model already sends the patch towards the target, a few poisoned pairs implant a backdoor
that resists fine-tuning defenses. Here: a square patch (position as BadNets), Adam on its
pixels for ``steps`` steps over the attacker's non-target images, loss
``-cos(f(x + patch), t_target) - visual_weight * cos(f(x + patch), mean f(target images))``.

The text embedding is the prompt ensemble of the target class
(:data:`~unbackdoor.clip.zeroshot.CLASS_TEMPLATES`), or ``target_caption`` when set.
:meth:`BadClipPatch.apply` needs the optimised patch: call :meth:`fit` first (or load a saved
attack); without it, it raises a :class:`ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.attacks.badnets import POSITIONS
from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import iterate
from unbackdoor.errors import ConfigError


@register_attack
@dataclass
class BadClipPatch(Attack):
    """Square patch optimised towards the target text and target images of a clean CLIP."""

    name: ClassVar[str] = "badclip"
    default_rate: ClassVar[float] = 0.01
    needs_model: ClassVar[bool] = True

    size: int = 4
    position: str = "bottom_right"
    margin: int = 1
    steps: int = 200
    lr: float = 0.05
    batch_size: int = 64
    visual_weight: float = 1.0
    target_caption: str | None = None
    patch: torch.Tensor | None = field(default=None, repr=False)

    def validate(self) -> None:
        self._require(isinstance(self.size, int) and self.size >= 1, "size", "an integer >= 1")
        self._require(self.position in POSITIONS, "position", f"one of {sorted(POSITIONS)}")
        self._require(self.steps >= 1, "steps", ">= 1")
        self._require(self.lr > 0, "lr", "> 0")
        self._require(self.batch_size >= 1, "batch_size", ">= 1")
        self._require(self.visual_weight >= 0, "visual_weight", ">= 0")

    def config(self) -> dict:
        cfg = super().config()
        cfg.pop("patch", None)  # a tensor: saved by tensors()
        return cfg

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if self.patch is None:
            raise ConfigError("attack 'badclip': the patch is not optimised yet; call fit() first")
        return self._stamp(x, self.patch.to(x))

    def _stamp(self, x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        r, col = POSITIONS[self.position](h, w, self.size, self.margin)
        out = x.clone()
        out[:, :, r : r + self.size, col : col + self.size] = patch.expand(n, c, -1, -1)
        return out

    def fit(
        self,
        data: ImageDataset,
        model: nn.Module | None = None,
        *,
        target: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        """Optimise the patch against the clean CLIP ``model`` on ``data`` (non-target images)."""
        from unbackdoor.clip.model.base import ClipModel
        from unbackdoor.clip.zeroshot.head import class_text_weights
        from unbackdoor.clip.zeroshot.templates import CLASS_TEMPLATES

        if not isinstance(model, ClipModel):
            raise ConfigError("attack 'badclip' needs a clean CLIP model to optimise its patch")
        if not 0 <= target < data.num_classes:
            raise ConfigError(f"attack 'badclip': target={target} is not a class of the data")
        model = model.to(device).eval()
        with torch.no_grad():
            if self.target_caption:
                text = F.normalize(model.encode_texts([self.target_caption]).float(), dim=-1)[0]
            else:
                names = [data.class_names[target]]
                text = class_text_weights(model, names, CLASS_TEMPLATES)[0]
            tgt = data.subset(torch.nonzero(data.labels == target).flatten()[:256])
            visual = torch.zeros_like(text)
            if len(tgt) and self.visual_weight:
                embs = [
                    F.normalize(model.encode_image(b.x).float(), dim=-1)
                    for b in iterate(tgt, 128, device=device)
                ]
                visual = F.normalize(torch.cat(embs).mean(0), dim=0)
        others = data.subset(torch.nonzero(data.labels != target).flatten())
        c = data.images.shape[1]
        g = self.generator()
        param = torch.rand(1, c, self.size, self.size, generator=g).to(device).requires_grad_()
        opt = torch.optim.Adam([param], lr=self.lr)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            step, epoch = 0, 0
            while step < self.steps:
                for b in iterate(others, self.batch_size, shuffle=True, seed=self.seed,
                                 epoch=epoch, device=device):  # fmt: skip
                    emb = F.normalize(model.encode_image(self._stamp(b.x, param)).float(), dim=-1)
                    loss = -(emb @ text).mean() - self.visual_weight * (emb @ visual).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        param.clamp_(0, 1)
                    step += 1
                    if step >= self.steps:
                        break
                epoch += 1
        finally:
            for p in params:
                p.requires_grad_(True)
        self.patch = param.detach().cpu()[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.patch is None else {"patch": self.patch}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "patch" in tensors:
            self.patch = tensors["patch"].float()
