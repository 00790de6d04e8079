"""Does the L2 prior help or hurt the additive family's verdict? (session 23, MNIST zoo models)

    OMP_NUM_THREADS=1 python benchmarks/bibau_dev/budget_prior_probe.py \
        blended=~/.cache/unbackdoor/zoo/df92fd6fcd96a92b \
        clean=~/.cache/unbackdoor/zoo/a810d9baf680885a \
        badnets=~/.cache/unbackdoor/zoo/d12e807504f99415

(the quick grid's MNIST models: `unbackdoor bench benchmarks/configs/quick.yaml` trains them;
``--draws 1,2`` first takes other 500-image draws, ``sample(500, draw)``).
For each model, the blind additive inversion BI-BAU runs (300 steps, eps 0.1 halved while the
median class is saturated) on 500 MNIST training images (``sample(500, 0)``, the draw on which
BI-BAU missed the Blended target in session 22), once with Neural Cleanse's adaptive lambda on
the L2 prior (``budget_prior=True``, every default so far) and once without it. Rows (the
verdict on the most anomalous class and every class's fooling rate) are printed as JSON lines;
session 23's are in ``budget_prior_probe.jsonl`` beside this file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from unbackdoor import load_dataset, load_model
from unbackdoor.inversion.invert import InversionConfig, invert_calibrated


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    draws = [0]
    if args and args[0] == "--draws":
        draws, args = [int(d) for d in args[1].split(",")], args[2:]
    train = load_dataset("mnist", split="train")
    for arg, draw in ((a, d) for d in draws for a in args):
        name, _, path = arg.partition("=")
        model, _ = load_model(Path(path).expanduser())
        data = train.sample(500, draw)
        for prior in (True, False):
            t0 = time.perf_counter()
            cfg = InversionConfig(family="additive", steps=300, budget_prior=prior)
            res, trail = invert_calibrated(model, data, cfg, seed=0)
            row = {
                "model": name,
                "draw": draw,
                "budget_prior": prior,
                "verdict": res.verdict().as_dict(),
                "eps_trail": trail,
                "fooling": [round(f, 4) for f in res.fooling.tolist()],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
