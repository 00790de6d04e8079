"""BI-BAU's rounds as pictures: what a user looks at to see whether the loop did its job.

:func:`rounds_image` (targeted runs) shows each class's evidence per round, i.e. the anomaly
index of its first inverted trigger re-measured on the current model over the held-out
images (so not the detection's index, ``anomaly_score``; the backdoor target's should fall
to the others' level), beside the fooling rates and the held-out clean accuracy
per round. :func:`transitions_image` (untargeted runs) shows the per-sample posterior over
targets averaged per true class, for the first trigger and the last one unlearned: an
all-to-all backdoor shows as a shifted diagonal that unlearning should blur. Both return
``3 x H x W`` tensors, written as PNGs beside the purified model.
"""

from __future__ import annotations

from typing import Any

import torch

from unbackdoor.utils.figures import figure_to_tensor, pyplot


def rounds_image(
    diag: dict[str, Any], classes: list[int], target: int, threshold: float
) -> torch.Tensor:
    """Evidence per class and fooling/accuracy per round of a targeted BI-BAU run."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    evidence = diag.get("evidence_per_round", [])
    for i, klass in enumerate(classes):
        ys = [row[i] for row in evidence]
        is_target = klass == target
        left.plot(
            range(len(ys)),
            ys,
            "o-" if is_target else "-",
            color="tab:red" if is_target else "0.6",
            lw=2 if is_target else 1,
            label=f"class {klass} (target)" if is_target else None,
            zorder=3 if is_target else 2,
        )
    left.axhline(threshold, color="black", ls=":", lw=1, label=f"index {threshold:g}")
    left.set_xlabel("round (0: before unlearning)")
    # not the report's anomaly_score, which is the detection's index on the inversion images
    left.set_ylabel("first trigger's anomaly index\n(held-out images)")
    left.set_title("E-step: how anomalously cheap each class is", fontsize=9)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)

    after = diag.get("fooling_per_round", [])
    rounds = range(1, len(after) + 1)
    right.plot(rounds, [100 * v for v in after], "s-", color="tab:red", label="trigger, after")
    fresh = diag.get("reinverted_fooling_per_round", [])
    if fresh:  # measured before rounds 2, 3, ... (and before the stop)
        right.plot(
            range(2, len(fresh) + 2),
            [100 * v for v in fresh],
            "^--",
            color="tab:orange",
            label="fresh trigger, before",
        )
    if "stop_fooling" in diag:
        right.axhline(100 * diag["stop_fooling"], color="tab:orange", ls=":", lw=1, label="stop")
    acc = diag.get("val_clean_acc_per_round", [])
    right.plot(rounds, [100 * v for v in acc], "o-", color="tab:blue", label="clean acc (val)")
    right.set_xlabel("round")
    right.set_ylabel("%")
    right.set_ylim(-2, 102)
    right.set_title("M-step: fooling and accuracy per round", fontsize=9)
    right.legend(fontsize=7, loc="center right")
    right.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return figure_to_tensor(fig)


def transitions_image(per_round: list[list[list[float]]]) -> torch.Tensor:
    """Mean posterior q(z | y) of the first and the last trigger of an untargeted run."""
    plt = pyplot()
    shown = [(0, per_round[0])]
    if len(per_round) > 1:
        shown.append((len(per_round) - 1, per_round[-1]))
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
    for ax, (r, matrix) in zip(axes[0], shown, strict=True):
        im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(matrix)))
        ax.set_yticks(range(len(matrix)))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("where the trigger sends it (z)")
        ax.set_ylabel("true class (y)")
        ax.set_title(f"trigger unlearned in round {r + 1}: q(z | y)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return figure_to_tensor(fig)
