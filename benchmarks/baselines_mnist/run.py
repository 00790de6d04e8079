"""FT / SAU / ANP on a small MNIST BadNets model (issue 6's tests): which baseline lowers ASR.

    python benchmarks/baselines_mnist/run.py ARCH EPOCHS 'N@name' 'N@name:{json options}' ...

Trains once, into ``models/`` (git-ignored), a BadNets model (10%, 3,000 MNIST images, seed 0),
then runs each defense on N defender images (seed 2) and prints the metrics on 2,000 test
images; for ANP also its val-chosen pruning sweep. Results: README.md here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import unbackdoor
from unbackdoor.attacks import load_attack
from unbackdoor.attacks.pipeline import attack_model

# the fast net's CIFAR recipe (batch 1024, lr 1.5) diverges at batch 64 on 3,000 MNIST images
FASTNET = {"lr": 0.1, "flip": "none"}


def main(arch: str, epochs: int, cells: list[str]) -> None:
    out = Path(__file__).resolve().parent / "models" / f"{arch}_e{epochs}"
    if not (out / "attack.json").exists():
        attack_model(
            "mnist", arch, "badnets", out=out, rate=0.1, epochs=epochs, train_samples=3000,
            batch_size=64, seed=0, picture=False, overwrite=True,
            **(FASTNET if arch == "fastnet" else {}),
        )  # fmt: skip
    model, _ = unbackdoor.load_model(out)
    test = unbackdoor.load_dataset("mnist", "test").sample(2000, 0)
    rec = load_attack(out)

    def metrics(m):
        return unbackdoor.evaluate(m, test, trigger=rec.trigger, attack_labels=rec.attack_labels)

    print("before", metrics(model), flush=True)
    for cell in cells:
        n, _, spec = cell.partition("@")
        name, _, opts = spec.partition(":")
        data = unbackdoor.load_dataset("mnist", "train").sample(int(n), 2)
        t = time.time()
        purified, report = unbackdoor.unlearn(model, data, name, **json.loads(opts or "{}"))
        print(cell, f"{time.time() - t:.0f} s", metrics(purified), flush=True)
        sweep = report.diagnostics.get("val_sweep")
        if sweep:
            points = [(s["point"], s["pruned"], round(s["val_clean_acc"], 3)) for s in sweep]
            print("  sweep", points)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
