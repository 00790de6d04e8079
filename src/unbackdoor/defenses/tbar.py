"""TBAR: trigger removal by backdoor arithmetic (arXiv 2510.14845).

Backdoors sit in weight space largely disentangled from the clean task, so a *trigger vector*
can be estimated and negated (task arithmetic, Ilharco et al., ICLR 2023):

1. stamp the defender's clean images with the trigger (the known one, or one reverse-engineered
   by :mod:`unbackdoor.inversion`) and label them with the target (known, or the class the
   inversion flags);
2. fine-tune the backdoored model theta_b briefly on them: theta_b+; tau = theta_b+ - theta_b;
3. theta_u = theta_b - alpha * tau, with alpha chosen on the defender's *held-out* data: the
   smallest alpha whose estimated ASR is under ``asr_threshold`` while clean accuracy stays at
   least ``ca_retention`` of theta_b's. The sweep is returned and plotted.

Options beyond the paper (each measured against plain TBAR in ``benchmarks/``):
``clean_projection`` removes, per layer, the trigger vector's component along a clean-task
vector fine-tuned on the defender's clean data with the same budget; ``top_layers`` keeps only
the layers that hold that share of the vector's squared norm.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.defenses.base import Defense, DefenseOutput
from unbackdoor.defenses.registry import register_defense
from unbackdoor.eval.metrics import evaluate
from unbackdoor.inversion import InversionConfig, invert
from unbackdoor.taskvec import TaskVector
from unbackdoor.train import TrainConfig, train
from unbackdoor.utils.runinfo import resolve_device

PARAM_SETS = ("all", "no_head")


@dataclass
class _TriggerSpec:
    stamp: Any  # (x, index) -> x'
    labels: Any  # y -> attack labels
    source: str
    target: int | None


@register_defense
@dataclass
class TBAR(Defense):
    """Negate a trigger vector estimated by brief fine-tuning on stamped clean images."""

    name: ClassVar[str] = "tbar"
    known_attack_capable: ClassVar[bool] = True

    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0)
    asr_threshold: float = 0.05
    ca_retention: float = 0.95
    params: str | list[str] = "all"
    clean_projection: bool = False
    top_layers: float | None = None
    inversion_steps: int = 300
    anomaly_threshold: float = 2.0

    def validate(self) -> None:
        self._require(self.epochs >= 1, "epochs", ">= 1")
        self._require(self.lr > 0, "lr", "> 0")
        self._require(
            len(self.alphas) >= 1 and min(self.alphas) >= 0,
            "alphas",
            "a non-empty list of alphas >= 0",
        )
        self._require(0 <= self.asr_threshold <= 1, "asr_threshold", "in [0, 1]")
        self._require(0 < self.ca_retention <= 1, "ca_retention", "in (0, 1]")
        self._require(
            isinstance(self.params, list) or self.params in PARAM_SETS,
            "params",
            f"one of {PARAM_SETS} or a list of parameter-name prefixes",
        )
        self._require(
            self.top_layers is None or 0 < self.top_layers <= 1,
            "top_layers",
            "None or a share in (0, 1]",
        )

    # ----------------------------------------------------------------------------------------
    def _key_filter(self, model: nn.Module):
        if self.params == "all":
            return None
        if self.params == "no_head":
            head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
            return lambda k: not k.startswith(head + ".")
        prefixes = tuple(self.params)
        return lambda k: k.startswith(prefixes)

    def _trigger(
        self, model: nn.Module, clean: ImageDataset, known_attack: Any, device: torch.device
    ) -> tuple[_TriggerSpec, dict[str, Any], dict]:
        if known_attack is not None:
            target = (
                None if known_attack.policy.kind == "all_to_all" else known_attack.policy.target
            )
            return (
                _TriggerSpec(
                    known_attack.trigger,
                    known_attack.attack_labels,
                    "known attack (attack.json)",
                    target,
                ),
                {},
                {},
            )
        res = invert(
            model,
            clean,
            InversionConfig(steps=self.inversion_steps),
            seed=self.seed,
            device=device,
            desc="tbar: inversion",
        )
        anomaly = res.anomaly_index()
        k = int(anomaly.argmax())
        target = res.classes[k]
        fam = res.family

        def stamp(x, index=None, fam=fam, k=k):
            return fam.stamp(x, k).detach()

        diag = {
            "inversion": {
                "sizes": res.sizes.tolist(),
                "anomaly": anomaly.tolist(),
                "fooling": res.fooling.tolist(),
            }
        }
        images = {"inverted_trigger": fam.images()["trigger"][k]}
        return (
            _TriggerSpec(
                stamp,
                lambda y, t=target: torch.full_like(y, t),
                "inverted (unknown attack)",
                target,
            ),
            diag,
            images,
        )

    def _stamped(self, data: ImageDataset, spec: _TriggerSpec) -> ImageDataset:
        """The defender's clean images with the trigger and the attack label."""
        with torch.no_grad():
            x = spec.stamp(data.float_images(), torch.arange(len(data)))
        labels = spec.labels(data.labels)
        keep = labels != data.labels
        images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return ImageDataset(
            images[keep],
            labels[keep],
            list(data.class_names),
            f"{data.name}+trigger",
            dict(data.meta),
        )

    def _finetune(self, model: nn.Module, data: ImageDataset, desc: str) -> nn.Module:
        tuned = copy.deepcopy(model)
        cfg = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=0.9,
            weight_decay=0.0,
            schedule="cosine",
            warmup=0.0,
            seed=self.seed,
            device=self.device,
        )
        train(tuned, data, cfg, desc=desc)
        return tuned

    def run(
        self, model: nn.Module, clean: ImageDataset, val: ImageDataset, *, known_attack: Any = None
    ) -> DefenseOutput:
        device = resolve_device(self.device)
        model.to(device).eval()
        spec, diag, images = self._trigger(model, clean, known_attack, device)
        theta_b = copy.deepcopy(model)
        keys = self._key_filter(model)
        tuned = self._finetune(model, self._stamped(clean, spec), "tbar: trigger fine-tune")
        tau = TaskVector.between(theta_b, tuned, keys)
        diag.update({"trigger_source": spec.source, "trigger_vector_norm": tau.norm()})
        if self.clean_projection:
            tau_c = TaskVector.between(
                theta_b, self._finetune(model, clean, "tbar: clean fine-tune"), keys
            )
            tau = _remove_clean_component(tau, tau_c)
            diag["clean_vector_cosine"] = tau.cosine(tau_c)
        if self.top_layers is not None:
            tau = _top_layers(tau, self.top_layers)
            diag["kept_layers"] = sorted(tau.deltas)
        diag["layer_stats"] = tau.layer_stats()
        base = evaluate(theta_b, val, trigger=spec.stamp, attack_labels=spec.labels)
        sweep = []
        for a in sorted(self.alphas):
            cand = tau.apply_to(copy.deepcopy(theta_b), -a)
            m = evaluate(cand, val, trigger=spec.stamp, attack_labels=spec.labels)
            sweep.append({"alpha": a, "val_clean_acc": m.clean_acc, "val_asr": m.asr})
        alpha, rule = choose_alpha(sweep, base.clean_acc, self.asr_threshold, self.ca_retention)
        tau.apply_to(model, -alpha)
        diag.update(
            {"alpha": alpha, "alpha_rule": rule, "alpha_sweep": sweep, "val_before": base.to_dict()}
        )
        return DefenseOutput(model, diag, images, suspected_target=spec.target, backdoor_found=True)


def choose_alpha(
    sweep: list[dict[str, float]], base_ca: float, asr_threshold: float, ca_retention: float
) -> tuple[float, str]:
    """The smallest alpha with estimated ASR <= threshold and CA >= retention * base CA.

    If none meets both, the alpha with the lowest ASR among those keeping the accuracy; if
    none keeps the accuracy, the smallest alpha (a no-op at 0) and the report says so.
    """
    floor = ca_retention * base_ca
    keeps = [s for s in sweep if s["val_clean_acc"] >= floor]
    good = [s for s in keeps if s["val_asr"] <= asr_threshold]
    if good:
        return min(good, key=lambda s: s["alpha"])["alpha"], "smallest alpha meeting both"
    if keeps:
        best = min(keeps, key=lambda s: (s["val_asr"], s["alpha"]))
        return best["alpha"], "no alpha met the ASR threshold: lowest ASR keeping accuracy"
    return min(s["alpha"] for s in sweep), "no alpha kept the accuracy: smallest alpha"


def _remove_clean_component(tau: TaskVector, clean: TaskVector) -> TaskVector:
    out = {}
    for k, v in tau.deltas.items():
        c = clean.deltas[k]
        den = float(c.pow(2).sum())
        out[k] = v - (float((v * c).sum()) / den) * c if den > 0 else v
    return TaskVector(out)


def _top_layers(tau: TaskVector, share: float) -> TaskVector:
    stats = sorted(tau.layer_stats(), key=lambda r: -float(r["share"]))
    keep, acc = [], 0.0
    for r in stats:
        keep.append(str(r["name"]))
        acc += float(r["share"])
        if acc >= share:
            break
    return tau.restrict(keep)
