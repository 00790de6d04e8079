"""Poisoned training sets: ``(x, y, index, is_poisoned, original_y)`` per sample.

The poisoned images are computed once and held as uint8 like any data set, so the one training
loop (with its augmentation) trains on them unchanged. The poison indices are exactly
``round(rate * N)`` samples drawn with a seed from the samples the label policy allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.policy import LabelPolicy
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError


@dataclass
class PoisonedDataset:
    """A training set with some samples triggered (and relabelled, unless clean-label)."""

    data: ImageDataset
    is_poisoned: torch.Tensor
    is_cover: torch.Tensor
    original_labels: torch.Tensor
    policy: LabelPolicy
    rate: float

    @property
    def poison_indices(self) -> torch.Tensor:
        return torch.nonzero(self.is_poisoned).flatten()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, bool, int]:
        return (
            self.data.images[i].float() / 255.0,
            int(self.data.labels[i]),
            i,
            bool(self.is_poisoned[i]),
            int(self.original_labels[i]),
        )


def choose_indices(mask: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    candidates = torch.nonzero(mask).flatten()
    perm = torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed))
    return candidates[perm[:count]].sort().values


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def poison_dataset(
    data: ImageDataset,
    attack: Attack,
    policy: LabelPolicy,
    rate: float,
    *,
    cover_rate: float = 0.0,
    seed: int = 0,
    batch_size: int = 1000,
) -> PoisonedDataset:
    """Poison ``round(rate * len(data))`` samples of ``data`` with ``attack`` under ``policy``."""
    n = len(data)
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"poison rate must lie in [0, 1), got {rate}")
    if not 0.0 <= cover_rate < 1.0:
        raise ConfigError(f"cover rate must lie in [0, 1), got {cover_rate}")
    if policy.num_classes != data.num_classes:
        raise ConfigError(
            f"label policy is for {policy.num_classes} classes, the data has {data.num_classes}"
        )
    count = round(rate * n)
    eligible = policy.eligible(data.labels)
    if count > int(eligible.sum()):
        raise ConfigError(
            f"poison rate {rate} asks for {count} samples but only {int(eligible.sum())} are "
            f"eligible under the {policy.kind} policy (target {policy.target})"
        )
    poisoned = torch.zeros(n, dtype=torch.bool)
    poisoned[choose_indices(eligible, count, seed)] = True
    cover = torch.zeros(n, dtype=torch.bool)
    n_cover = round(cover_rate * n)
    if n_cover:
        cover[choose_indices(~poisoned, n_cover, seed + 1)] = True
    images = data.images.clone()
    labels = data.labels.clone()
    for which, kind in ((poisoned, "poison"), (cover, "cover")):
        idx = torch.nonzero(which).flatten()
        for start in range(0, idx.numel(), batch_size):
            b = idx[start : start + batch_size]
            x = data.images[b].float() / 255.0
            if kind == "poison":
                out = attack.poison_images(x, b, data.labels[b])
                labels[b] = policy.poisoned_labels(data.labels[b])
            else:
                out = attack.cover_images(x, b)
                if out is None:
                    out = attack.apply(x, b)
            images[b] = _to_uint8(out)
    meta = dict(data.meta, attack=attack.name)
    out_data = ImageDataset(
        images, labels, list(data.class_names), f"{data.name}+{attack.name}", meta
    )
    return PoisonedDataset(out_data, poisoned, cover, data.labels.clone(), policy, rate)
