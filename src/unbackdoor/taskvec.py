"""Task vectors: differences of state dicts, and the arithmetic on them.

Ilharco et al., "Editing Models with Task Arithmetic" (ICLR 2023, arXiv 2212.04089): a task
vector ``tau = theta_ft - theta_pre`` can be added to or subtracted from a model's weights.
TBAR uses the negation of a *trigger* vector to remove a backdoor. Integer buffers (BatchNorm's
``num_batches_tracked``) are not part of a task vector; float buffers (running statistics) are
kept, since they move with fine-tuning. Works on any ``nn.Module`` and on saved artifacts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unbackdoor.errors import ArtifactError

StateLike = nn.Module | dict[str, torch.Tensor] | str | Path


def _state(obj: StateLike) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    if isinstance(obj, (str, Path)):
        from unbackdoor.models import load_model

        model, _ = load_model(obj)
        return {k: v.detach() for k, v in model.state_dict().items()}
    return obj


@dataclass
class TaskVector:
    """A dict of float tensors: ``finetuned - base`` for every float entry of the state dict."""

    deltas: dict[str, torch.Tensor]

    @classmethod
    def between(
        cls, base: StateLike, finetuned: StateLike, keys: Callable[[str], bool] | None = None
    ) -> TaskVector:
        """``finetuned - base``; both must have the same architecture (names and shapes)."""
        a, b = _state(base), _state(finetuned)
        if set(a) != set(b):
            diff = sorted(set(a) ^ set(b))
            raise ArtifactError(f"task vector: architectures differ (keys {diff[:4]} ...)")
        deltas = {}
        for k, va in a.items():
            vb = b[k]
            if va.shape != vb.shape:
                raise ArtifactError(
                    f"task vector: {k!r} has shapes {tuple(va.shape)} and "
                    f"{tuple(vb.shape)}: the architectures differ"
                )
            if not va.is_floating_point() or (keys is not None and not keys(k)):
                continue
            deltas[k] = (vb.float() - va.float()).cpu()
        return cls(deltas)

    # --- algebra -----------------------------------------------------------------------------
    def _check(self, other: TaskVector) -> None:
        if set(self.deltas) != set(other.deltas):
            raise ArtifactError("task vectors cover different parameters")

    def __add__(self, other: TaskVector) -> TaskVector:
        self._check(other)
        return TaskVector({k: v + other.deltas[k] for k, v in self.deltas.items()})

    def __sub__(self, other: TaskVector) -> TaskVector:
        self._check(other)
        return TaskVector({k: v - other.deltas[k] for k, v in self.deltas.items()})

    def __mul__(self, alpha: float) -> TaskVector:
        return TaskVector({k: v * alpha for k, v in self.deltas.items()})

    __rmul__ = __mul__

    def __neg__(self) -> TaskVector:
        return self * -1.0

    def norm(self) -> float:
        return math.sqrt(sum(float(v.pow(2).sum()) for v in self.deltas.values()))

    def dot(self, other: TaskVector) -> float:
        self._check(other)
        return sum(float((v * other.deltas[k]).sum()) for k, v in self.deltas.items())

    def cosine(self, other: TaskVector) -> float:
        den = self.norm() * other.norm()
        return self.dot(other) / den if den > 0 else 0.0

    def restrict(self, keys: Iterable[str]) -> TaskVector:
        keep = set(keys)
        return TaskVector({k: v for k, v in self.deltas.items() if k in keep})

    def layer_stats(self, other: TaskVector | None = None) -> list[dict[str, float | str]]:
        """Per-entry norm, share of the total squared norm, and cosine with ``other``."""
        total = sum(float(v.pow(2).sum()) for v in self.deltas.values()) or 1.0
        rows = []
        for k, v in self.deltas.items():
            row: dict[str, float | str] = {
                "name": k,
                "norm": float(v.norm()),
                "share": float(v.pow(2).sum()) / total,
                "numel": v.numel(),
            }
            if other is not None and k in other.deltas:
                o = other.deltas[k]
                den = float(v.norm() * o.norm())
                row["cosine"] = float((v * o).sum()) / den if den > 0 else 0.0
            rows.append(row)
        return rows

    def apply_to(self, model: nn.Module, alpha: float = 1.0) -> nn.Module:
        """``model.weights += alpha * tau`` in place (entries not in the vector untouched)."""
        state = model.state_dict()
        missing = sorted(set(self.deltas) - set(state))
        if missing:
            raise ArtifactError(f"task vector does not fit this model: no {missing[:4]}")
        with torch.no_grad():
            for k, d in self.deltas.items():
                t = state[k]
                if t.shape != d.shape:
                    raise ArtifactError(
                        f"task vector: {k!r} is {tuple(d.shape)}, the model's is {tuple(t.shape)}"
                    )
                t.add_(d.to(t.device, t.dtype), alpha=alpha)
                if k.endswith("running_var"):  # a variance must stay positive
                    t.clamp_(min=1e-5)
        return model
