"""Which modules of a network are batch normalisation layers.

PyTorch's own ``BatchNorm*d`` and the shift-only form the fast net uses
(:class:`~unbackdoor.models.fastnet.FrozenScaleBatchNorm`, after airbench) both keep running
statistics that defenses re-estimate (TBAR's recalibration) or mask (ANP). A check against
``nn.modules.batchnorm._BatchNorm`` alone silently misses the second kind.
"""

from __future__ import annotations

import torch
from torch import nn


def is_shift_only_norm(m: nn.Module) -> bool:
    """A BatchNorm whose scale is fixed (no ``weight``) and whose shift is learned, such as the
    fast net's :class:`~unbackdoor.models.fastnet.FrozenScaleBatchNorm`."""
    return (
        isinstance(getattr(m, "running_var", None), torch.Tensor)
        and isinstance(getattr(m, "bias", None), nn.Parameter)
        and getattr(m, "weight", None) is None
    )


def batch_norms(model: nn.Module, shift_only: bool = True) -> list[nn.Module]:
    """Every layer of ``model`` with BatchNorm running statistics: PyTorch's, and with
    ``shift_only`` the shift-only kind above."""
    return [
        m
        for m in model.modules()
        if (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats)
        or (shift_only and is_shift_only_norm(m))
    ]
