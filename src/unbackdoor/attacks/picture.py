"""A picture of a trigger: clean images, triggered images, and the (amplified) difference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from unbackdoor.utils.io import atomic_write


def _hwc(x: torch.Tensor):
    img = x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return img[..., 0] if img.shape[-1] == 1 else img


def save_trigger_picture(
    trigger: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    path: str | Path,
    *,
    title: str = "",
    index: torch.Tensor | None = None,
) -> Path:
    """Save a PNG grid: one column per image, rows clean / triggered / |difference|.

    The difference is scaled so its largest value is white, and the scale is printed, so
    invisible triggers are visible without hiding how small they are.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = images.float()
    idx = index if index is not None else torch.arange(x.shape[0])
    with torch.no_grad():
        xt = trigger(x, idx)
    diff = (xt - x).abs()
    n = x.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.0), squeeze=False)
    gray = "gray" if x.shape[1] == 1 else None
    for j in range(n):
        peak = float(diff[j].max())
        for i, (img, label) in enumerate(
            [
                (x[j], "clean"),
                (xt[j], "triggered"),
                (diff[j] / max(peak, 1e-8), f"|diff| x{1 / max(peak, 1e-8):.0f}"),
            ]
        ):
            ax = axes[i, j]
            ax.imshow(_hwc(img), cmap=gray, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label.split(" ")[0], fontsize=9)
            if i == 2:
                ax.set_xlabel(f"max {peak:.3f}\nL2 {float(diff[j].norm()):.2f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path
