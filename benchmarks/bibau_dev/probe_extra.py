"""Two more statistics tried on the dev SIG model in session 17 (dev models only).

    STAGE=lowres CFG=8:0.15,16:0.15 python benchmarks/bibau_dev/probe_extra.py dev_sig dev_clean
    STAGE=margin python benchmarks/bibau_dev/probe_extra.py dev_sig dev_clean

- ``lowres``: a per-class universal additive trigger drawn at low resolution (a ``g x g`` field
  per channel, upsampled bilinearly; ``CFG`` lists ``grid:eps``), inverted with BI-BAU's
  inversion at lambda 0 (the largest fooling inside the L-inf box). A smooth field leaves an
  adversarial perturbation fewer degrees of freedom, while SIG's signal is smooth.
- ``margin``: the largest logit margin each class reaches on any input (optimised from 20
  random images, 300 Adam steps), the statistic of MM-BD (Wang et al., "MM-BD: Post-Training
  Detection of Backdoor Attacks with Arbitrary Backdoor Pattern Types Using a Maximum Margin
  Statistic", IEEE S&P 2024): a backdoor target is expected to reach an anomalously large one.

- ``unlearn``: gradient ascent on the defender's clean images (SGD lr 0.01, momentum 0.9,
  batch 128, train mode) until their accuracy falls under 20%, as the first step of RNP (Li et
  al., "Reconstructive Neuron Pruning for Backdoor Defense", ICML 2023), which observes that
  the backdoor survives this unlearning; here: which class the unlearned model then predicts on
  held-out defender images, per class share.

- ``collapse``: the same through :func:`unbackdoor.inversion.collapse` (held-out accuracy
  checked every 4 steps, three batch orders averaged, bf16 as in the benchmark), the statistic
  BI-BAU uses.

Rows go to ``probe_extra.jsonl`` beside this file. The defender images are ``probe.py``'s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import provenance  # noqa: E402

from unbackdoor.data import load_dataset  # noqa: E402
from unbackdoor.inversion import InversionConfig, invert  # noqa: E402
from unbackdoor.inversion.collapse import collapse  # noqa: E402
from unbackdoor.inversion.families import Additive  # noqa: E402
from unbackdoor.inversion.invert import autocast  # noqa: E402
from unbackdoor.models import load_model  # noqa: E402
from unbackdoor.unlearn import split_defender_data  # noqa: E402

HERE = Path(__file__).resolve().parent
from dev_model import RUNS  # noqa: E402  (this folder is on sys.path)


class LowRes(Additive):
    """:class:`Additive` whose perturbation is a bilinear upsampling of a ``grid`` field."""

    def __init__(self, num: int, shape: tuple[int, int, int], *, eps: float, grid: int) -> None:
        nn.Module.__init__(self)
        c, h, w = shape
        self.eps, self.step_scale, self.hw = eps, eps, (h, w)
        g = torch.Generator().manual_seed(0)
        self.theta = nn.Parameter(eps * 0.1 * torch.randn(num, c, grid, grid, generator=g))

    @property
    def delta(self) -> torch.Tensor:
        return F.interpolate(self.theta, size=self.hw, mode="bilinear", align_corners=False)

    def project(self) -> None:  # bilinear weights are convex: the field stays in the box
        with torch.no_grad():
            self.theta.clamp_(-self.eps, self.eps)


def lowres(model: nn.Module, name: str, data) -> list[dict]:
    rows = []
    for item in os.environ.get("CFG", "8:0.15,16:0.15").split(","):
        grid, eps = int(item.split(":")[0]), float(item.split(":")[1])
        t0 = time.perf_counter()
        fam = LowRes(data.num_classes, data.input_shape, eps=eps, grid=grid)
        cfg = InversionConfig(
            family="additive", steps=200, eps=eps, bf16=True, scaled_steps=True, lambda_init=0.0
        )
        res = invert(model, data, cfg, seed=0, family=fam, desc=f"{name} grid {grid} eps {eps}")
        rows.append(
            {
                "stage": "lowres",
                "grid": grid,
                "eps": eps,
                "fooling": [round(float(v), 4) for v in res.fooling],
                "effect": [round(float(v), 2) for v in res.effect_size()],
                "seconds": round(time.perf_counter() - t0),
            }
        )
    return rows


def margin(model: nn.Module, k_classes: int, restarts: int = 20, steps: int = 300) -> list[dict]:
    t0, best = time.perf_counter(), []
    torch.manual_seed(0)
    for k in range(k_classes):
        u = torch.randn(restarts, 3, 32, 32).mul(0.5).requires_grad_(True)
        opt = torch.optim.Adam([u], lr=0.05)
        for step in range(steps + 1):
            with autocast("cpu", True), torch.set_grad_enabled(step < steps):
                z = model(torch.sigmoid(u)).float()
            m = z[:, k] - torch.cat([z[:, :k], z[:, k + 1 :]], 1).max(1).values
            if step < steps:
                opt.zero_grad()
                (-m.sum()).backward()
                opt.step()
        best.append(round(float(m.max()), 2))
    return [{"stage": "margin", "max_margin": best, "seconds": round(time.perf_counter() - t0)}]


def unlearn(model: nn.Module, data, held) -> list[dict]:
    from unbackdoor.data.loader import iterate

    t0, step, acc = time.perf_counter(), 0, 1.0
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trail = []
    for epoch in range(20):
        model.train()
        for batch in iterate(data, 128, shuffle=True, seed=0, epoch=epoch):
            with autocast("cpu", True):
                loss = F.cross_entropy(model(batch.x).float(), batch.y)
            opt.zero_grad()
            (-loss).backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad(), autocast("cpu", True):
            pred = model(held.float_images()).float().argmax(1)
        acc = float((pred == held.labels).float().mean())
        share = torch.bincount(pred, minlength=held.num_classes).float() / len(pred)
        trail.append({"epoch": epoch + 1, "acc": round(acc, 4), "share": share.tolist()})
        if acc < 0.2:
            break
    return [
        {
            "stage": "unlearn",
            "steps": step,
            "acc": round(acc, 4),
            "share": [round(v, 4) for v in trail[-1]["share"]],
            "trail": trail,
            "seconds": round(time.perf_counter() - t0),
        }
    ]


def main() -> None:
    split = torch.load(RUNS / "dev_split.pt", weights_only=True)
    train = load_dataset("cifar10", "train").subset(split["train_idx"], "cifar10")
    data, held = split_defender_data(train.sample(2500, 7919), 0.2, 0)
    stage = os.environ.get("STAGE", "lowres")
    for name in sys.argv[1:]:
        model, _ = load_model(RUNS / name)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if stage == "collapse":
            t0 = time.perf_counter()
            res = collapse(model, data, held, bf16=True)
            rows = [
                {
                    "stage": "collapse",
                    **res.as_dict(),
                    "ratio": round(res.ratio(), 3),
                    "breadth": [round(float(v), 3) for v in res.breadth()],
                    "seconds": round(time.perf_counter() - t0),
                }
            ]
        elif stage == "unlearn":
            rows = unlearn(model, data, held)
        else:
            rows = (
                lowres(model, name, data) if stage == "lowres" else margin(model, held.num_classes)
            )
        for row in rows:
            row = {"model": name, **row, **provenance(0)}
            print(json.dumps(row), flush=True)
            with (HERE / "probe_extra.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
