"""Why does I-BAU collapse PreAct-ResNet18 (benchmarks/gpu_short)? A CPU-sized probe.

A PreAct-ResNet18 trained briefly on a CIFAR-10 subset (CPU budget) is given one I-BAU round
with the official defaults and with variants, and 20 plain clean Adam steps (lr 1e-3, what one
I-BAU round's outer loop takes on 2,000 images) in eval mode and in training mode, to separate
the hypergradient from the optimiser and from BatchNorm's frozen statistics. Held-out accuracy
is measured on 1,000 test images (a diagnosis, not a tuning: nothing here sets a default).

    OMP_NUM_THREADS=1 python benchmarks/gpu_short/ibau_probe.py   (writes ibau_probe.json)
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import unbackdoor
from unbackdoor.data.loader import iterate
from unbackdoor.utils.runinfo import run_info

HERE = Path(__file__).parent
TRAIN, EPOCHS, CLEAN, STEPS = 6000, 4, 1000, 20


def adam_steps(model: torch.nn.Module, data, train_mode: bool, lr: float = 1e-3) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train(train_mode)
    done = 0
    for epoch in range(100):
        for batch in iterate(data, 100, shuffle=True, seed=1, epoch=epoch):
            loss = F.cross_entropy(model(batch.x), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == STEPS:
                model.eval()
                return


def main() -> None:
    t0 = time.perf_counter()
    train = unbackdoor.load_dataset("cifar10", "train")
    test = unbackdoor.load_dataset("cifar10", "test").sample(1000, 0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    fit, clean = train.subset(order[:TRAIN]), train.subset(order[TRAIN : TRAIN + CLEAN])
    trained = unbackdoor.train_model(fit, "preact_resnet18", test_data=test, epochs=EPOCHS, seed=0)
    base = trained.model.eval()
    rows = [{"variant": "trained", "acc": unbackdoor.evaluate(base, test).clean_acc}]
    for name, train_mode, lr in (
        ("adam 1e-3, eval mode", False, 1e-3),
        ("adam 1e-3, train mode", True, 1e-3),
        ("adam 1e-4, eval mode", False, 1e-4),
    ):
        m = copy.deepcopy(base)
        adam_steps(m, clean, train_mode, lr)
        rows.append({"variant": name, "acc": unbackdoor.evaluate(m, test).clean_acc})
        print(rows[-1], flush=True)
    for name, opts in (
        ("ibau defaults, 1 round", {}),
        ("ibau lr 1e-4, 1 round", {"lr": 1e-4}),
        ("ibau notebook (clamp, radius 10), 1 round", {"clamp": True, "norm_bound": 10.0}),
    ):
        purified, report = unbackdoor.unlearn(
            copy.deepcopy(base), clean, "ibau", rounds=1, seed=0, **opts
        )
        r = report.diagnostics["rounds"][0]
        rows.append(
            {
                "variant": name,
                "acc": unbackdoor.evaluate(purified, test).clean_acc,
                "delta_l2": r["delta_l2"],
            }
        )
        print(rows[-1], flush=True)
    out = {
        "setting": f"preact_resnet18, {TRAIN} train images x {EPOCHS} epochs, {CLEAN} clean "
        f"images for the defense, accuracy on 1,000 test images, {STEPS} Adam steps",
        "rows": rows,
        "wall_time": time.perf_counter() - t0,
        "run": run_info(0),
    }
    (HERE / "ibau_probe.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
