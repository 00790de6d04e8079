"""The one evaluation loop: batched, no-grad inference with optional input transform (a trigger)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import Batch, iterate
from unbackdoor.utils.precision import autocast as bf16_autocast
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
    batch_size: int = 256,
    device: str | torch.device | None = None,
    bf16: bool = False,
    channels_last: bool | None = None,
    desc: str = "eval",
) -> Iterator[tuple[Batch, dict[str, torch.Tensor]]]:
    """For each batch, the model's logits under each named input transform (``None``: identity).

    The model is put in eval mode; logits are returned in float32 on the CPU.
    ``channels_last`` (default: on for CPU) runs convolutions in NHWC layout, which oneDNN
    executes several times faster on CPU; the model's own layout is restored afterwards.
    """
    dev = resolve_device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    autocast = bf16_autocast(dev, bf16)
    total = -(-len(data) // batch_size)
    nhwc = dev.type == "cpu" if channels_last is None else channels_last
    restore = nhwc and not _is_channels_last(model)
    if nhwc:
        model.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad(), autocast:
            for batch in progress(iterate(data, batch_size, device=dev), desc=desc, total=total):
                out = {}
                for name, fn in transforms.items():
                    x = batch.x if fn is None else fn(batch.x, batch.index)
                    if nhwc and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    out[name] = model(x).float().cpu()
                yield batch, out
    finally:
        if restore:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-D weights are stored channels-last (ambiguous ones are skipped)."""
    for p in model.parameters():
        if p.dim() == 4:
            nhwc, nchw = p.is_contiguous(memory_format=torch.channels_last), p.is_contiguous()
            if nhwc != nchw:
                return nhwc
    return True  # nothing to convert


def predict(
    model: nn.Module,
    data: ImageDataset,
    *,
    transform: Transform | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    bf16: bool = False,
    channels_last: bool | None = None,
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
            channels_last=channels_last,
            desc="predict",
        )
    ]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)
