"""BI-BAU's multimodal mode: inversion against class prompts, contrastive unlearning.

BI-BAU (arXiv 2606.14078) extends to multimodal contrastive models; DESIGN.md section 4 gives
our specification: the trigger phi is inverted against the image encoder so that stamped images
collapse onto one text embedding, the target caption being the latent z over a bank of class
prompts (the zero-shot head: :func:`unbackdoor.inversion.invert` on the
:class:`~unbackdoor.clip.zeroshot.ZeroShotClassifier`), and the unlearning uses the contrastive
loss on (stamped image, true caption) pairs plus clean pairs. The EM loop, the posterior with
memory, the bounded re-inversion and the stopping rule are those of
:class:`unbackdoor.defenses.bibau.BIBAU`; only the outer minimisation changes:

    L = InfoNCE(clean images and stamped images, their true captions)
        + kl_weight * KL(zero-shot outputs on clean images || the backdoored model's)
        + feature_weight * ||e(stamped) - e(clean)||^2 / ||e(clean)||^2

with e the image embedding (the stamped image's embedding is pulled onto its clean version's,
the multimodal form of BI-BAU's feature-invariance term). The text tower and the temperature
are frozen, so the head's class embeddings stay valid; the captions' embeddings are computed
once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.clip.data.pairs import CaptionedDataset
from unbackdoor.clip.defenses.common import (
    FrozenText,
    as_pairs,
    head,
    require_clip,
)
from unbackdoor.clip.train.contrastive import contrastive_loss
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.defenses.base import DefenseOutput
from unbackdoor.defenses.bibau import BIBAU
from unbackdoor.defenses.registry import register_defense
from unbackdoor.inversion.families import TriggerFamily
from unbackdoor.train.path_point import toward
from unbackdoor.utils.precision import autocast


@register_defense
@dataclass
class ClipBIBAU(BIBAU):
    """BI-BAU for CLIP: invert against class prompts, unlearn with the contrastive loss."""

    name: ClassVar[str] = "clip-bibau"

    templates: list[str] | None = None
    lr: float = 0.005
    # warm, short re-inversions: each step runs the whole image tower (as benchmarked in
    # benchmarks/clip); the classifier default (fresh, 150 steps) has not been measured here
    inner_steps: int = 20
    reinvert: str = "warm"
    max_epochs: float | None = None
    # the additive budget search (up to four inversions through the image tower) has not been
    # measured on CLIP: the fixed eps of the benchmarked runs
    auto_eps: bool = False
    # the benchmarked CLIP rows ran with the prior; without it has not been measured there
    budget_prior: bool = True
    # the classifier's per-sample shared examples have not been measured on CLIP
    shared_eps: float | None = None
    shared_loss: str = "teacher"
    # the classifier's TBAR pre-step does not apply to CLIP (see validate); the rows were
    # measured with the stop level of every default before it
    negate_first: bool = False
    stop_fooling: float | None = 0.05
    # the contrastive M-step has no classifier KL to take on blends (see validate)
    mix_kl_weight: float = 0.0
    # the classifier's effect-size path of detection (session 29) has not been measured on CLIP
    strong_effect: float | None = None
    # nor its minimum fooling for the budgeted families (session 30)
    min_fooling: float = 0.0
    # nor the gated smooth companion (session 38): an all-class inversion more through the
    # image tower, for a low-frequency backdoor the CLIP rows do not hold
    companion: bool = False

    def validate(self) -> None:
        super().validate()
        self._require(self.mode != "untargeted", "mode", "'auto' or 'targeted' for CLIP")
        self._require(self.shared_loss == "teacher", "shared_loss", "'teacher' for CLIP")
        # the classifier TBAR forms the vector; the CLIP one (image tower) is not wired in
        self._require(not self.negate_first, "negate_first", "False for CLIP")
        # the contrastive M-step has no classifier KL to blend
        self._require(not self.mix_kl_weight, "mix_kl_weight", "0 for CLIP")

    def run(
        self, model: nn.Module, clean: ImageDataset, val: ImageDataset, *, known_attack: Any = None
    ) -> DefenseOutput:
        clip = require_clip(model, self.name)
        t0 = time.perf_counter()
        pairs = as_pairs(clean, self.seed)
        zs = head(clip, pairs, self.templates)
        with FrozenText(clip), torch.no_grad():
            unique = sorted(set(pairs.captions))
            was = clip.training
            clip.eval()
            emb = F.normalize(clip.encode_texts(unique).float(), dim=-1)
            clip.train(was)
        self._captions = (unique, emb)
        with FrozenText(clip):
            out = super().run(zs, pairs, val, known_attack=known_attack)
        out.model = clip
        out.diagnostics["wall_time"] = time.perf_counter() - t0
        return out

    def _unlearn(
        self,
        model: nn.Module,
        teacher: nn.Module,
        clean: ImageDataset,
        bank: list[TriggerFamily],
        opt: torch.optim.Optimizer,
        augment: Any,
        device: torch.device,
        rnd: int,
    ) -> None:
        assert isinstance(clean, CaptionedDataset)
        unique, text = self._captions
        where = {c: i for i, c in enumerate(unique)}
        cap_idx = torch.tensor([where[c] for c in clean.captions])
        text = text.to(device)
        clip = model.clip
        desc = f"clip-bibau: unlearn {rnd + 1}"
        for batch, xs, t_logits in self.stamped_batches(
            model, teacher, clean, bank, augment, device, rnd, desc
        ):
            x, y = batch.x, batch.y
            with toward(model, teacher, self.path_rho):  # PAM, as in BIBAU._unlearn
                n, n_s = x.shape[0], xs.shape[0]
                with autocast(device, self.bf16):
                    img = clip.encode_image(torch.cat([x, xs])).float()
                txt = text[cap_idx[batch.index.cpu()]]
                txt_all = torch.cat([txt, txt[:n_s]])  # stamped images keep their true captions
                loss = contrastive_loss(img, txt_all, clip.logit_scale, torch.cat([y, y[:n_s]]))
                if self.kl_weight:
                    e = F.normalize(img[:n], dim=-1)
                    logits = clip.logit_scale.exp().float() * e @ model.text_weights.t()
                    loss = loss + self.kl_weight * F.kl_div(
                        logits.log_softmax(1),
                        t_logits.log_softmax(1),
                        log_target=True,
                        reduction="batchmean",
                    )
                if self.feature_weight:
                    f_clean, f_stamp = img[:n_s].detach(), img[n : n + n_s]
                    num = (f_stamp - f_clean).pow(2).sum(1)
                    den = f_clean.pow(2).sum(1).clamp_min(1e-6)
                    loss = loss + self.feature_weight * (num / den).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
        model.eval()
