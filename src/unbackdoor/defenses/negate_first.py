"""BI-BAU's ``negate_first`` pre-step: subtract TBAR's trigger vector before unlearning.

Adversarial unlearning on an inverted trigger can hide a backdoor without removing it: on the
fast net's WaNet model BI-BAU left ASR 0.88% that brief re-tuning brought back to 75.5%, while
TBAR, which moves the weights along a trigger vector (task arithmetic, Ilharco et al., ICLR
2023; TBAR's use of it for backdoors), left the same backdoor at the never-backdoored floor
after re-tuning (``benchmarks/cpu``). This pre-step gives BI-BAU that move first: the trigger
vector is formed from BI-BAU's *found* trigger and target (no attack knowledge), exactly as
:class:`~unbackdoor.defenses.tbar.TBAR` forms it in its unknown-attack mode, subtracted at the
largest alpha that keeps ``retention`` of the held-out clean accuracy (TBAR's rule for an
inverted trigger), and BI-BAU's rounds then repair the clean task and unlearn what is left.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.defenses.tbar import TBAR, TriggerSpec, sweep_image
from unbackdoor.inversion.families import TriggerFamily


def negate_found_trigger(
    model: nn.Module,
    clean: ImageDataset,
    val: ImageDataset,
    trigger: TriggerFamily,
    target: int,
    *,
    retention: float = 0.95,
    repair_epochs: int = 0,
    min_gain: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    bf16: bool = False,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Subtract TBAR's trigger vector for ``trigger`` (one class, sent to ``target``) from
    ``model`` in place; return the diagnostics (alpha, the sweep, the vector's norms) and the
    sweep as a picture (held-out CA and estimated ASR against alpha).

    ``clean`` forms the vector and recalibrates each candidate; ``val`` chooses alpha: the
    largest whose held-out accuracy is at least ``retention`` times ``model``'s (0 if none).
    With ``repair_epochs`` each candidate is first fine-tuned that many epochs on ``clean``
    (TBAR's repair) and the model is left repaired. With ``min_gain`` the move is undone (the
    model restored as it came) when it does not lower the trigger's held-out ASR by at least
    that share of its value at alpha 0: a vector that does not carry the found trigger only
    costs accuracy.
    """
    original = copy.deepcopy(model.state_dict()) if min_gain > 0 else None
    tbar = TBAR(
        seed=seed,
        device=device,
        bf16=bf16,
        plot=False,
        repair_epochs=repair_epochs,
        ca_retention=retention,
        # as calibrated (benchmarks/bibau_dev): the fast net's shift-only BatchNorms were not
        # recalibrated then; whether recalibrating them helps the pre-step is unmeasured
        recalibrate_all_norms=False,
    )

    def stamp(x: Any, index: Any = None) -> Any:
        return trigger.stamp(x, 0).detach()

    spec = TriggerSpec(
        stamp,
        lambda y: y.new_full(y.shape, target),
        "BI-BAU's inverted trigger",
        target,
        found=True,
        anomaly=0.0,  # an inverted trigger: TBAR's "largest" alpha rule (rule_for)
    )
    diag: dict[str, Any] = {}
    alpha, rule, sweep, base_ca = tbar.negate(model, clean, val, spec, diag)
    chosen = next((s for s in sweep if s["alpha"] == alpha), {})
    start = next((s["val_asr"] for s in sweep if s["alpha"] == 0), None)
    kept = None
    if original is not None and alpha > 0 and start is not None:
        kept = chosen.get("val_asr", start) <= (1 - min_gain) * start
        if not kept:
            model.load_state_dict(original)
    picture = sweep_image(
        sweep, alpha, retention * base_ca, tbar.asr_threshold, "BI-BAU negate_first"
    )
    return {
        "alpha": alpha,
        "alpha_rule": rule,
        "retention": retention,
        "repair_epochs": repair_epochs,
        "min_gain": min_gain,
        "val_asr_at_zero": start,
        # None: the guard was off or had nothing to judge (alpha 0)
        "kept": kept,
        "val_clean_acc_before": base_ca,
        "val_clean_acc": chosen.get("val_clean_acc"),
        "val_asr": chosen.get("val_asr"),
        "alpha_sweep": sweep,
        "trigger_vector_norm": diag.get("trigger_vector_norm"),
        "trigger_vector_norm_projected": diag.get("trigger_vector_norm_projected"),
    }, picture
