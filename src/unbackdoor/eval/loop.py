"""The one evaluation loop: batched, no-grad inference with optional input transform (a trigger)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import Batch, iterate
from unbackdoor.utils.progress import progress
from unbackdoor.utils.runinfo import resolve_device

Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, index) -> x'


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def batched_logits(
    model: nn.Module,
    data: ImageDataset,
    transforms: dict[str, Transform | None],
    *,
    batch_size: int = 500,
    device: str | torch.device | None = None,
    bf16: bool = False,
    desc: str = "eval",
) -> Iterator[tuple[Batch, dict[str, torch.Tensor]]]:
    """For each batch, the model's logits under each named input transform (``None``: identity).

    The model is put in eval mode; logits are returned in float32 on the CPU.
    """
    dev = resolve_device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    total = -(-len(data) // batch_size)
    try:
        with torch.no_grad(), autocast:
            for batch in progress(iterate(data, batch_size, device=dev), desc=desc, total=total):
                out = {}
                for name, fn in transforms.items():
                    x = batch.x if fn is None else fn(batch.x, batch.index)
                    out[name] = model(x).float().cpu()
                yield batch, out
    finally:
        model.train(was_training)


def predict(
    model: nn.Module,
    data: ImageDataset,
    *,
    transform: Transform | None = None,
    batch_size: int = 500,
    device: str | torch.device | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Predicted classes for every sample of ``data`` (after ``transform`` if given)."""
    preds = [
        out["x"].argmax(1)
        for _, out in batched_logits(
            model,
            data,
            {"x": transform},
            batch_size=batch_size,
            device=device,
            bf16=bf16,
            desc="predict",
        )
    ]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)
