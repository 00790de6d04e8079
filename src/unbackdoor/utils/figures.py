"""Matplotlib without a display: figures saved atomically or turned into image tensors.

A defense returns its pictures as ``C x H x W`` tensors (``DefenseOutput.images``), which
``unlearn_artifact`` writes as PNGs beside the purified model; :func:`figure_to_tensor` lets a
plot travel the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unbackdoor.utils.io import atomic_write


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_to_tensor(fig: Any, dpi: int = 100) -> torch.Tensor:
    """Render ``fig`` to a ``3 x H x W`` float tensor in [0, 1] and close it."""
    import numpy as np

    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    pyplot().close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG (atomically) and close it."""
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    pyplot().close(fig)
    return path
