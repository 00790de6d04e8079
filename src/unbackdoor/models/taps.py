"""Activations of a model's inner layers, captured on each forward.

Defenses that act on what a trigger does *inside* a network (BI-BAU's layer-feature term) need
the outputs of its blocks, not only its logits. A model may name the layers it wants tapped in a
``feature_layers`` attribute (the fast net: its three conv groups; the PreAct-ResNet: its
blocks); for any other model every ``nn.Conv2d`` is tapped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def feature_layer_names(model: nn.Module, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The layers to tap: ``names`` if given (each checked to exist), else the model's own
    ``feature_layers``, else every ``nn.Conv2d``. Raises ``ValueError`` naming the problem."""
    known = dict(model.named_modules())
    chosen = names if names is not None else getattr(model, "feature_layers", None)
    if chosen is None:
        chosen = [n for n, m in known.items() if isinstance(m, nn.Conv2d)]
        if not chosen:
            raise ValueError(
                f"{type(model).__name__} has no nn.Conv2d and no feature_layers attribute: "
                "name the layers to tap (feature_layers=[...])"
            )
    chosen = tuple(chosen)
    if not chosen:
        raise ValueError("feature_layers is empty: name at least one layer, or leave it None")
    missing = [n for n in chosen if n not in known or not n]
    if missing:
        raise ValueError(
            f"{type(model).__name__} has no layer named {missing}; some of its layers: "
            f"{[n for n in known if n][:12]}"
        )
    return chosen


class LayerTaps:
    """Keeps the latest output of each named layer of ``model`` (``values``, in name order)
    until :meth:`remove`; usable as a context manager."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        self.names = feature_layer_names(model, names)
        self._out: dict[str, torch.Tensor] = {}
        self._handles = [
            model.get_submodule(n).register_forward_hook(self._keeper(n)) for n in self.names
        ]

    def _keeper(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor: "
                    "tap a layer whose output is one"
                )
            self._out[name] = output

        return hook

    @property
    def values(self) -> list[torch.Tensor]:
        return [self._out[n] for n in self.names if n in self._out]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._out = [], {}

    def __enter__(self) -> LayerTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def relative_gap(moved: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Per row, ``|moved - anchor|^2 / |anchor|^2`` (in float32), averaged over rows: how far
    a perturbation moves a representation, relative to its size. ``anchor`` is not detached
    here; callers detach it when it must not move."""
    moved, anchor = moved.float().flatten(1), anchor.float().flatten(1)
    num = (moved - anchor).pow(2).sum(1)
    return (num / anchor.pow(2).sum(1).clamp_min(1e-6)).mean()
