"""The model registry: ``create_model(name, num_classes, ...)`` and ``list_models()``.

Every registered factory takes ``num_classes``, ``in_channels``, ``input_size`` and
``mean``/``std`` (the normalisation that becomes the model's first layer), plus its own keyword
arguments, and returns an ``nn.Module`` that maps ``[0, 1]`` images to logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unbackdoor.errors import ConfigError
from unbackdoor.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model without its weights (stored in the manifest)."""

    name: str
    num_classes: int
    in_channels: int = 3
    input_size: tuple[int, int] = (32, 32)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    kwargs: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "kwargs": dict(self.kwargs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(
            name=str(d["name"]),
            num_classes=int(d["num_classes"]),
            in_channels=int(d["in_channels"]),
            input_size=tuple(int(v) for v in d["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            kwargs=tuple(sorted(dict(d.get("kwargs", {})).items())),
        )


class Normalize(nn.Module):
    """First layer of every model: ``(x - mean) / std`` on [0, 1] images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def create_model(
    name: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    input_size: Sequence[int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name``; its :class:`ModelSpec` is kept as ``model.spec``."""
    factory = MODELS.get(name)
    if num_classes < 2:
        raise ConfigError(f"model {name!r}: num_classes must be at least 2, got {num_classes}")
    if in_channels not in (1, 3):
        raise ConfigError(f"model {name!r}: in_channels must be 1 or 3, got {in_channels}")
    mean = tuple(mean) if mean is not None else (0.5,) * in_channels
    std = tuple(std) if std is not None else (0.25,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"model {name!r}: mean/std must have {in_channels} values")
    size = tuple(int(s) for s in input_size)
    try:
        model = factory(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=size,
            mean=mean,
            std=std,
            **kwargs,
        )
    except TypeError as e:
        raise ConfigError(f"model {name!r}: bad arguments {sorted(kwargs)} ({e})") from None
    # NHWC weights (and so activations): oneDNN's native layout. The training recipes set it
    # (``channels_last``) for training only; a model loaded for a defense ran NCHW. On an AVX2
    # CPU, one thread, inversion steps ran 1.25-1.35x and training steps 1.09-1.5x faster in
    # NHWC for every registered model (the small CNN's NCHW max pooling took a third of its
    # step), with the same outputs to float rounding; saved weights are written contiguous
    # (``benchmarks/foundation/channels_last.md``)
    model = model.to(memory_format=torch.channels_last)
    model.spec = ModelSpec(
        name,
        num_classes,
        in_channels,
        size,
        mean,
        std,  # type: ignore[assignment]
        tuple(sorted(kwargs.items())),
    )
    return model


def create_from_spec(spec: ModelSpec) -> nn.Module:
    return create_model(
        spec.name,
        spec.num_classes,
        in_channels=spec.in_channels,
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        **dict(spec.kwargs),
    )


def list_models() -> list[str]:
    return MODELS.names()
