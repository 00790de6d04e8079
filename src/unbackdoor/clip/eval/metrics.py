"""Metrics for CLIP models: zero-shot CA and ASR, and image-text retrieval recall@k.

- zero-shot clean accuracy: the share of test images whose nearest class-prompt embedding
  (prompt ensembles, Radford et al., ICML 2021) is their class;
- ASR: the share of triggered test images *of other classes than the target* whose nearest
  class is the target caption's class (DESIGN.md section 4, as for classifiers);
- retrieval recall@k (image -> text and text -> image): the share of queries whose own pair is
  among the k most similar items of the other modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.clip.data.pairs import CaptionedDataset
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.zeroshot.head import zero_shot_classifier
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import DataError
from unbackdoor.eval.loop import Transform, batched_logits
from unbackdoor.eval.metrics import Metrics, evaluate


def zero_shot_metrics(
    model: ClipModel,
    data: ImageDataset,
    *,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    trigger: Transform | None = None,
    target: int | None = None,
    batch_size: int = 256,
) -> Metrics:
    """Zero-shot CA on ``data`` and, with ``trigger`` and ``target``, ASR and RA."""
    if (trigger is None) != (target is None):
        raise ValueError("trigger and target must be given together")
    names = list(class_names or data.class_names)
    if len(names) != data.num_classes:
        raise DataError(f"{data.name}: {data.num_classes} classes but {len(names)} class names")
    if target is not None and not 0 <= target < len(names):
        raise DataError(f"target={target} is not one of the {len(names)} classes")
    head = zero_shot_classifier(model, names, templates)
    labels = None if target is None else (lambda y: torch.full_like(y, int(target)))
    return evaluate(head, data, trigger=trigger, attack_labels=labels, batch_size=batch_size)


class _ImageEmbedder(nn.Module):
    def __init__(self, model: ClipModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(x).float(), dim=-1)


@torch.no_grad()
def image_embeddings(
    model: ClipModel, data: ImageDataset, *, trigger: Transform | None = None, batch_size: int = 256
) -> torch.Tensor:
    """Normalised image embeddings of every sample (after ``trigger`` if given), on the CPU."""
    out = [
        o["x"]
        for _, o in batched_logits(
            _ImageEmbedder(model), data, {"x": trigger}, batch_size=batch_size, desc="embed"
        )
    ]
    return torch.cat(out)


@dataclass
class Retrieval:
    """Recall@k in both directions, as fractions."""

    image_to_text: dict[int, float]
    text_to_image: dict[int, float]

    def to_dict(self) -> dict[str, dict[int, float]]:
        return asdict(self)


@torch.no_grad()
def retrieval_recall(
    model: ClipModel, pairs: CaptionedDataset, ks: Sequence[int] = (1, 5, 10)
) -> Retrieval:
    """Image -> text and text -> image recall@k over the pairs of ``pairs``.

    Identical captions (label-made captions repeat) count as the same text: an image retrieves
    its pair when any copy of its caption is among the k nearest *distinct* captions.
    """
    if not isinstance(pairs, CaptionedDataset) or len(pairs) == 0:
        raise DataError("retrieval recall needs a non-empty set of image-caption pairs")
    if any(k < 1 for k in ks):
        raise DataError(f"recall@k needs k >= 1, got {list(ks)}")
    img = image_embeddings(model, pairs)
    unique = sorted(set(pairs.captions))
    where = {c: i for i, c in enumerate(unique)}
    own = torch.tensor([where[c] for c in pairs.captions])
    was = model.training
    model.eval()
    txt = F.normalize(model.encode_texts(unique).float().cpu(), dim=-1)
    model.train(was)
    sim = img @ txt.t()  # N images x U distinct captions
    i2t = {}
    for k in ks:
        top = sim.topk(min(k, sim.shape[1]), dim=1).indices
        i2t[int(k)] = float((top == own.view(-1, 1)).any(1).float().mean())
    # text -> image: each distinct caption is a query; its relevant images are its own pairs
    t2i = {}
    sim_t = sim.t()  # U x N
    for k in ks:
        top = sim_t.topk(min(k, sim_t.shape[1]), dim=1).indices  # U x k image indices
        hit = (own[top] == torch.arange(len(unique)).view(-1, 1)).any(1)
        t2i[int(k)] = float(hit.float().mean())
    return Retrieval(i2t, t2i)
