"""Task vectors: differences of state dicts, and the arithmetic on them.

Ilharco et al., "Editing Models with Task Arithmetic" (ICLR 2023, arXiv 2212.04089): a task
vector ``tau = theta_ft - theta_pre`` can be added to or subtracted from a model's weights.
TBAR uses the negation of a *trigger* vector to remove a backdoor. Integer buffers (BatchNorm's
``num_batches_tracked``) are not part of a task vector; float buffers (running statistics) are
kept, since they move with fine-tuning. Works on any ``nn.Module`` and on saved artifacts.

:class:`LinearizedModel` fine-tunes in the tangent space of a model instead (Ortiz-Jimenez et
al., "Task Arithmetic in the Tangent Space", NeurIPS 2023, arXiv 2305.12827): its parameters are
the task vector itself, and it computes the first-order Taylor expansion
``f(x; theta_0) + J_theta f(x; theta_0) d`` with one Jacobian-vector product.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jvp

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

    def layer_norms(self, base: StateLike) -> list[dict[str, float | str]]:
        """Per layer (entries grouped by their module: weight and bias together), the vector's
        norm, the base weights' norm, the relative norm ``|tau_l| / |theta_l|`` and the share of
        the vector's squared norm; largest relative norm first.

        The relative norm says where the vector concentrates *for the layer's scale*: the raw
        norm favours wide layers (the flattened conv-to-linear matrix) whatever they do.
        """
        state = _state(base)
        missing = sorted(set(self.deltas) - set(state))
        if missing:
            raise ArtifactError(f"task vector does not fit this model: no {missing[:4]}")
        total = sum(float(v.pow(2).sum()) for v in self.deltas.values()) or 1.0
        groups: dict[str, list[str]] = {}
        for k in self.deltas:
            groups.setdefault(k.rpartition(".")[0] or k, []).append(k)
        rows: list[dict[str, float | str]] = []
        for layer, keys in groups.items():
            sq = sum(float(self.deltas[k].pow(2).sum()) for k in keys)
            base_sq = sum(float(state[k].float().pow(2).sum()) for k in keys)
            rows.append(
                {
                    "layer": layer,
                    "keys": ",".join(keys),
                    "norm": math.sqrt(sq),
                    "base_norm": math.sqrt(base_sq),
                    "relative": math.sqrt(sq / base_sq) if base_sq > 0 else math.inf,
                    "share": sq / total,
                }
            )
        return sorted(rows, key=lambda r: -float(r["relative"]))

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


class LinearizedModel(nn.Module):
    """``f_lin(x; theta_0 + d) = f(x; theta_0) + J_theta f(x; theta_0) d``, trainable in ``d``.

    Ortiz-Jimenez et al., "Task Arithmetic in the Tangent Space: Improved Editing of Pre-Trained
    Models" (NeurIPS 2023, arXiv 2305.12827): fine-tuning this first-order expansion instead of
    the network makes the learned task vectors far more *weight-disentangled*, so adding or
    negating one leaves the other tasks alone. The only trainable parameters are the deltas
    ``d`` (zeros at the start), one per parameter of ``model`` selected by ``keys``; the others
    stay at theta_0. The base model is a frozen private copy kept in eval mode (normalisation
    layers use their running statistics, so ``f_lin`` is a fixed function of ``d``), and
    :meth:`task_vector` returns ``d`` as a :class:`TaskVector` over parameters only (buffers do
    not move in the tangent space).
    """

    def __init__(self, model: nn.Module, keys: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        base = copy.deepcopy(model).eval()
        for p in base.parameters():
            p.requires_grad_(False)
        # Not registered as a submodule, so that ``train()`` never switches it to training mode.
        object.__setattr__(self, "_base", base)
        self._names = [n for n, _ in base.named_parameters() if keys is None or keys(n)]
        if not self._names:
            raise ArtifactError("linearized model: no parameter selected")
        params = dict(base.named_parameters())
        self.deltas = nn.ParameterList(
            [nn.Parameter(torch.zeros_like(params[n])) for n in self._names]
        )

    def _apply(self, fn, recurse=True):  # noqa: ANN001 (keep the frozen base on the same device)
        super()._apply(fn, recurse)
        self._base._apply(fn, recurse)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self._base
        params = dict(base.named_parameters())
        primals = tuple(params[n] for n in self._names)

        def f(*ps: torch.Tensor) -> torch.Tensor:
            return functional_call(base, dict(zip(self._names, ps, strict=True)), (x,))

        out, dout = jvp(f, primals, tuple(self.deltas))
        return out + dout

    def task_vector(self) -> TaskVector:
        """The learned ``d`` as a task vector relative to theta_0."""
        pairs = zip(self._names, self.deltas, strict=True)
        return TaskVector({n: d.detach().float().cpu().clone() for n, d in pairs})
