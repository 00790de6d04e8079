"""Batches from an in-memory :class:`ImageDataset`, with optional augmentation and DDP sharding.

No ``DataLoader`` workers: the data is already a uint8 tensor in memory, so a batch is one index
gather, one conversion to float and one batched augmentation. The order depends only on
``(seed, epoch)``, which makes a resumed run see exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from unbackdoor.data.dataset import ImageDataset


class Batch(NamedTuple):
    x: torch.Tensor  # float in [0, 1], N x C x H x W, on the target device
    y: torch.Tensor  # int64 labels
    index: torch.Tensor  # positions in the data set (for per-sample metadata such as poison flags)


def epoch_order(
    n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """The sample order of one epoch for one rank (padded so every rank gets equal work)."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        order = torch.arange(n)
    if world_size > 1:
        per_rank = -(-n // world_size)
        pad = per_rank * world_size - n
        if pad:
            order = torch.cat([order, order[:pad]])
        order = order[rank::world_size]
    return order


def num_batches(n: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    per_rank = -(-n // world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def iterate(
    data: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    augment: Callable[..., torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es of float images in [0, 1] on ``device``."""
    order = epoch_order(
        len(data), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size
    )
    aug_gen = torch.Generator().manual_seed(seed * 7_919 + epoch * 104_729 + rank)
    total = num_batches(len(order), batch_size, drop_last)
    for b in range(total):
        idx = order[b * batch_size : (b + 1) * batch_size]
        x = data.images[idx].to(device, non_blocking=True).float().div_(255.0)
        if augment is not None:
            x = augment(x, aug_gen, index=idx, epoch=epoch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield Batch(x, data.labels[idx].to(device, non_blocking=True), idx)


def endless(
    data: ImageDataset, batch_size: int, *, seed: int = 0, device: torch.device | str = "cpu"
) -> Iterator[Batch]:
    """Shuffled batches of ``data`` without end, reshuffled each epoch: for loops that count
    optimisation steps rather than epochs."""
    epoch = 0
    while True:
        yield from iterate(data, batch_size, shuffle=True, seed=seed, epoch=epoch, device=device)
        epoch += 1
