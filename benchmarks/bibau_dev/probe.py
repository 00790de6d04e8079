"""Probe what tells a backdoor target from the natural classes, on development models only.

    python benchmarks/bibau_dev/probe.py dev_sig [dev_clean ...]   # -> probe.jsonl

Written when BI-BAU's blind detection missed the test zoo's SIG model (session 15): the
additive family's budget was halved to eps 0.05, under which the SIG target was reached by 6%
of the images and a natural class by 94%. For each model this measures, on 2,000 defender images
of the dev model's own training split (the draw ``calibrate.py`` uses), candidate statistics:

- ``additive``: per-class universal additive triggers (BI-BAU's additive family, 200 steps) at
  several L-inf budgets, with and without expectation over the training augmentation (random
  crop with 4-pixel padding and flip, applied after stamping): per class, the fooling rate and
  the mean probability of the class on the stamped images of other classes;
- ``landing``: where untargeted per-sample PGD (10 steps) sends the images, per class;
- ``targeted`` (with ``TARGETED=1``): how many images per-sample targeted PGD (5 steps) sends
  to each class.

- ``warp`` (with ``FAMILY=warp``): the same per-class stage with the warp family, whose
  budgets (``EPS``) are the largest displacement in pixels (session 17, WaNet).

Environment: ``EPS=0.05,0.1`` (budgets), ``FAMILY=warp``, ``EOT=0|only`` (without / only with
the augmentation), ``LANDING=0`` (skip the landing stage), ``SCALED_STEPS=1``
(``InversionConfig.scaled_steps``), ``TAG`` (recorded in each row). The true trigger is never
used. Rows are appended to ``probe.jsonl`` beside this file, one per stage and one per model.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import provenance  # noqa: E402

from unbackdoor.data import load_dataset  # noqa: E402
from unbackdoor.data.transforms import Augment  # noqa: E402
from unbackdoor.inversion import InversionConfig, invert  # noqa: E402
from unbackdoor.inversion.invert import autocast  # noqa: E402
from unbackdoor.models import load_model  # noqa: E402
from unbackdoor.unlearn import split_defender_data  # noqa: E402

HERE = Path(__file__).resolve().parent
from dev_model import RUNS  # noqa: E402  (this folder is on sys.path)

EPS = {False: (0.025, 0.05, 0.1, 0.15), True: (0.05, 0.1, 0.15)}  # by augmentation
if os.environ.get("EPS"):  # a subset, "0.05,0.1" (both with and without augmentation)
    EPS = {k: tuple(float(e) for e in os.environ["EPS"].split(",")) for k in EPS}
LANDING = os.environ.get("LANDING", "1") == "1"
STEPS = 200
SCALED = os.environ.get("SCALED_STEPS") == "1"  # InversionConfig.scaled_steps
FAMILY = os.environ.get("FAMILY", "additive")
TARGETED = os.environ.get("TARGETED") == "1"  # slow (10 x the landing) and, on dev BadNets, flat


class Augmented(nn.Module):
    """The model seen through the training augmentation (a fresh random draw per call)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.aug = model, Augment(crop_padding=4, flip=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.aug(x))


@torch.no_grad()
def class_stats(model: nn.Module, res, data) -> dict[str, list[float]]:
    """Per class k: fooling rate and mean p_k of the stamped images whose label is not k."""
    fool, prob, images = [], [], data.float_images()
    for i, k in enumerate(res.classes):
        x = images[data.labels != k]
        hits, ps = [], []
        for s in range(0, len(x), 256):
            with autocast("cpu", True):
                p = model(res.family.stamp(x[s : s + 256], i)).float().softmax(1)
            hits.append(p.argmax(1) == k)
            ps.append(p[:, k])
        fool.append(round(float(torch.cat(hits).float().mean()), 4))
        prob.append(round(float(torch.cat(ps).mean()), 4))
    return {"fooling": fool, "mean_prob": prob, "size": [round(float(v), 3) for v in res.sizes]}


def pgd(model, x, y, eps, steps, targeted):
    alpha = 2.5 * eps / steps
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        with autocast("cpu", True):
            loss = F.cross_entropy(model(x + delta).float(), y)
        (g,) = torch.autograd.grad(loss, delta)
        step = -alpha * g.sign() if targeted else alpha * g.sign()
        delta = (delta.detach() + step).clamp(-eps, eps)
        delta = torch.max(torch.min(delta, 1 - x), -x)
    with torch.no_grad(), autocast("cpu", True):
        return model(x + delta).float().argmax(1)


def main() -> None:
    split = torch.load(RUNS / "dev_split.pt", weights_only=True)
    train = load_dataset("cifar10", "train").subset(split["train_idx"], "cifar10")
    data = split_defender_data(train.sample(2500, 7919), 0.2, 0)[0]
    k_classes = data.num_classes
    out = HERE / "probe.jsonl"
    for name in sys.argv[1:]:
        model, _ = load_model(RUNS / name)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        row: dict = {
            "model": name,
            "samples": len(data),
            "tag": os.environ.get("TAG", ""),
            **provenance(0),
        }
        t0 = time.perf_counter()
        y, images = data.labels, data.float_images()
        for eps in (2 / 255, 4 / 255, 8 / 255) if LANDING else ():
            land = pgd(model, images, y, eps, 10, targeted=False)
            moved = land != y
            hist = torch.bincount(land[moved], minlength=k_classes).float()
            row[f"landing_eps{eps * 255:.0f}"] = (hist / hist.sum().clamp_min(1)).tolist()
            row[f"landing_eps{eps * 255:.0f}_moved"] = round(float(moved.float().mean()), 4)
        for eps in (2 / 255, 4 / 255) if TARGETED else ():
            rates = []
            for k in range(k_classes):
                keep = y != k
                x = images[keep]
                hit = pgd(model, x, torch.full((len(x),), k), eps, 5, targeted=True) == k
                rates.append(round(float(hit.float().mean()), 4))
            row[f"targeted_eps{eps * 255:.0f}"] = rates
        row["pgd_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({k: v for k, v in row.items() if "eps" in k}), flush=True)
        for eot in {"0": (False,), "only": (True,)}.get(os.environ.get("EOT", ""), (False, True)):
            for eps in EPS[eot]:
                t0 = time.perf_counter()
                torch.manual_seed(0)
                seen = Augmented(model) if eot else model
                cfg = InversionConfig(family=FAMILY, steps=STEPS, bf16=True, scaled_steps=SCALED)
                cfg = replace(cfg, **{cfg.budget_field: eps})
                res = invert(seen, data, cfg, seed=0, desc=f"{name} eps {eps} eot {eot}")
                torch.manual_seed(1)
                stats = {"plain": class_stats(model, res, data)}
                if eot:
                    stats["augmented"] = class_stats(seen, res, data)
                key = f"{FAMILY}_eps{eps:g}{'_eot' if eot else ''}"
                row[key] = {**stats, "seconds": round(time.perf_counter() - t0, 1)}
                print(key, json.dumps(stats), flush=True)
                with out.open("a") as f:  # one line per stage: a stopped run keeps its stages
                    f.write(
                        json.dumps({k: row[k] for k in ("model", "samples", "tag", key)}) + "\n"
                    )
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
