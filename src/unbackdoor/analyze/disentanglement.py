"""Weight disentanglement of the clean task and the trigger: is TBAR's premise true here?

Ortiz-Jimenez et al., "Task Arithmetic in the Tangent Space: Improved Editing of Pre-Trained
Models" (NeurIPS 2023, arXiv 2305.12827), define the weight-disentanglement error of two task
vectors ``tau_1``, ``tau_2`` added to a base ``theta_0`` as

    xi(a_1, a_2) = sum_t E_{x ~ D_t} dist( f(x; theta_0 + a_t tau_t),
                                          f(x; theta_0 + a_1 tau_1 + a_2 tau_2) )

with the prediction disagreement ``dist(y, y') = 1[y != y']``: on each task's inputs, editing
with both vectors should act as editing with that task's vector alone. Task arithmetic (and
TBAR's negation of a trigger vector, arXiv 2510.14845) works where xi is small.

Here theta_0 is the suspect (backdoored) model, task c is the clean task (clean inputs, vector
fine-tuned on the defender's clean data) and task t is the trigger (stamped inputs whose true
class is not the target, vector fine-tuned on stamped images labelled with the target: the
known trigger from ``attack.json`` or the inverted one). Both vectors are built exactly as TBAR
builds them (:meth:`unbackdoor.defenses.tbar.TBAR.task_vector`, same budget and options, e.g.
``linearized``), fine-tuned on the defender's training part and measured on its held-out part.
The edited models are the ordinary (non-linear) networks, the ones TBAR would return.
TBAR's own path is the row ``a_c = 0``, ``a_t < 0``: there xi is the share of clean
predictions that negating the trigger vector changes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import DataError
from unbackdoor.eval.loop import predict
from unbackdoor.taskvec import TaskVector
from unbackdoor.utils.progress import progress

DEFAULT_GRID = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass
class DisentanglementResult:
    """xi on the grid (rows: ``alphas_clean``, columns: ``alphas_trigger``) and its parts."""

    alphas_clean: list[float]
    alphas_trigger: list[float]
    xi: list[list[float]]
    clean_term: list[list[float]]  # disagreement on clean inputs
    trigger_term: list[list[float]]  # disagreement on triggered inputs
    clean_acc: list[list[float]]  # accuracy of the jointly edited model on clean inputs
    asr: list[list[float]]  # share of triggered inputs it sends to the attack label
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mean_xi(self) -> float:
        return sum(map(sum, self.xi)) / (len(self.xi) * len(self.xi[0]))


def _edited(base: nn.Module, parts: list[tuple[TaskVector, float]]) -> nn.Module:
    m = copy.deepcopy(base)
    for tau, a in parts:
        if a:
            tau.apply_to(m, a)
    return m.eval()


def weight_disentanglement_error(
    base: nn.Module,
    tau_clean: TaskVector,
    tau_trigger: TaskVector,
    clean: ImageDataset,
    triggered: ImageDataset,
    alphas_clean: Sequence[float] = DEFAULT_GRID,
    alphas_trigger: Sequence[float] = DEFAULT_GRID,
    *,
    device: str | torch.device | None = None,
) -> DisentanglementResult:
    """xi(a_c, a_t) of Ortiz-Jimenez et al. (NeurIPS 2023) on the grid, with its two terms.

    ``clean`` holds task c's inputs with their true labels; ``triggered`` holds task t's inputs
    (already stamped) labelled with the attack label, which the ``asr`` grid is measured
    against. ``base`` is theta_0; it is not modified.
    """
    if len(clean) == 0 or len(triggered) == 0:
        raise DataError("disentanglement: needs clean and triggered inputs (one set is empty)")
    ac, at = [float(a) for a in alphas_clean], [float(a) for a in alphas_trigger]
    # single-task predictions: f(theta_0 + a_c tau_c) on clean, f(theta_0 + a_t tau_t) on triggered
    single_c = {a: predict(_edited(base, [(tau_clean, a)]), clean, device=device) for a in ac}
    single_t = {a: predict(_edited(base, [(tau_trigger, a)]), triggered, device=device) for a in at}
    shape = [[0.0] * len(at) for _ in ac]
    xi, c_term, t_term, ca, asr = (copy.deepcopy(shape) for _ in range(5))
    cells = [(i, j) for i in range(len(ac)) for j in range(len(at))]
    for i, j in progress(cells, desc="disentanglement grid"):
        joint = _edited(base, [(tau_clean, ac[i]), (tau_trigger, at[j])])
        pc = predict(joint, clean, device=device)
        pt = predict(joint, triggered, device=device)
        c_term[i][j] = float((pc != single_c[ac[i]]).float().mean())
        t_term[i][j] = float((pt != single_t[at[j]]).float().mean())
        xi[i][j] = c_term[i][j] + t_term[i][j]
        ca[i][j] = float((pc == clean.labels).float().mean())
        asr[i][j] = float((pt == triggered.labels).float().mean())
    return DisentanglementResult(ac, at, xi, c_term, t_term, ca, asr)


def heatmap_figure(result: DisentanglementResult, title: str = "") -> Any:
    """Three heat maps over (a_t, a_c): xi, clean accuracy and ASR of the edited model."""
    from unbackdoor.utils.figures import pyplot

    plt = pyplot()
    top = max(0.05, max(map(max, result.xi)))  # xi lies in [0, 2]; scale to what is there
    panels = [
        ("xi (prediction disagreement)", result.xi, 0.0, top, "magma_r"),
        ("clean accuracy", result.clean_acc, 0.0, 1.0, "viridis"),
        ("ASR (triggered -> target)", result.asr, 0.0, 1.0, "viridis"),
    ]
    n_c, n_t = len(result.alphas_clean), len(result.alphas_trigger)
    fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 0.42 * n_c + 2.0), squeeze=False)
    for ax, (name, grid, lo, hi, cmap) in zip(axes[0], panels, strict=True):
        im = ax.imshow(grid, origin="lower", cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(n_t), [f"{a:g}" for a in result.alphas_trigger], fontsize=7)
        ax.set_yticks(range(n_c), [f"{a:g}" for a in result.alphas_clean], fontsize=7)
        ax.set_xlabel("alpha_t (trigger vector)")
        ax.set_ylabel("alpha_c (clean vector)")
        ax.set_title(name, fontsize=9)
        if n_c * n_t <= 150:
            for i in range(n_c):
                for j in range(n_t):
                    v = grid[i][j]
                    frac = (v - lo) / (hi - lo)  # magma_r is dark at the top, viridis at 0
                    dark = frac > 0.5 if cmap == "magma_r" else frac < 0.5
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=5.5,
                        color="white" if dark else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def disentanglement_artifact(
    directory: str | Path,
    *,
    out: str | Path | None = None,
    clean_data: str | ImageDataset | None = None,
    clean_samples: int | None = None,
    clean_fraction: float = 0.05,
    known_attack: bool = False,
    alphas_clean: Sequence[float] = DEFAULT_GRID,
    alphas_trigger: Sequence[float] = DEFAULT_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "auto",
    **tbar_options: Any,
) -> DisentanglementResult:
    """xi(a_c, a_t) for the model in ``directory``; with ``out``, JSON and a heat-map PNG.

    The defender's data are chosen as ``unlearn`` chooses them (``clean_data``/
    ``clean_samples``, default 5% of the training set) and split into a training part (for the
    two vectors) and a held-out part (for xi). ``known_attack`` reads the trigger from
    ``attack.json``; otherwise it is inverted as in TBAR, and the detection is recorded in
    ``info`` (the analysis runs on the most anomalous class either way). ``tbar_options`` are
    TBAR's settings (``epochs``, ``lr``, ``linearized``, ``params`` ...).
    """
    from unbackdoor.attacks.store import load_attack
    from unbackdoor.defenses.tbar import TBAR
    from unbackdoor.models import load_model
    from unbackdoor.unlearn import defender_data, split_defender_data
    from unbackdoor.utils.io import atomic_write_json
    from unbackdoor.utils.runinfo import resolve_device, run_info, seed_everything

    grid = [*alphas_clean, *alphas_trigger]
    if not alphas_clean or not alphas_trigger or not all(math.isfinite(a) for a in grid):
        raise DataError("disentanglement: the alpha grids must be non-empty lists of numbers")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a directory")
        out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    tbar = TBAR(seed=seed, device=device, plot=False, **tbar_options)
    model, manifest = load_model(directory, dev)
    data = defender_data(manifest, clean_data, clean_samples, clean_fraction, seed)
    train_part, val_part = split_defender_data(data, val_fraction, seed)
    record = load_attack(directory) if known_attack else None
    seed_everything(seed)
    spec, diag, _ = tbar.trigger(model, train_part, record, dev)
    keys = tbar.key_filter(model)
    tau_t = tbar.task_vector(model, tbar.stamped(train_part, spec), keys, "trigger vector")
    tau_c = tbar.task_vector(model, train_part, keys, "clean vector")
    triggered = tbar.stamped(val_part, spec)
    result = weight_disentanglement_error(
        model, tau_c, tau_t, val_part, triggered, alphas_clean, alphas_trigger, device=dev
    )
    result.info = {
        "source": str(directory),
        "trigger_source": spec.source,
        "suspected_target": spec.target,
        "backdoor_found": spec.found,
        "anomaly_score": spec.anomaly,
        "clean_samples_used": len(data),
        "train_samples": len(train_part),
        "val_clean": len(val_part),
        "val_triggered": len(triggered),
        "cosine_clean_trigger": tau_c.cosine(tau_t),
        "norm_clean_vector": tau_c.norm(),
        "norm_trigger_vector": tau_t.norm(),
        "mean_xi": result.mean_xi,
        "tbar_config": tbar.config(),
        **({"inversion": diag["inversion"]} if "inversion" in diag else {}),
        "run": run_info(seed),
    }
    if out_dir is not None:
        from unbackdoor.utils.figures import save_figure

        atomic_write_json(out_dir / "disentanglement.json", result.to_dict())
        title = (
            f"{Path(directory).name}: weight disentanglement, {spec.source}, "
            f"cos(tau_c, tau_t) {result.info['cosine_clean_trigger']:.3f}"
        )
        save_figure(heatmap_figure(result, title), out_dir / "disentanglement.png")
    return result
