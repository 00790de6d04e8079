"""Why BI-BAU's blind detection misses the 8x8 BadNets patch on the 96 px CLIP model: a probe.

The benchmark's inversions (100 steps, 8 images per class and step, ``run.py``'s ``BIBAU``)
ended with masks of 168-210 pixels for every class, the target's the largest, while the real
patch has 64 and sends 92.6% of the test images to the target. This asks whether the mask
inversion is simply unconverged there: it inverts the mask-and-pattern family for a few classes
at the benchmark's budget and at longer ones, on the defender's 1,000 pairs only, and records
the mask size every 20 steps (a defender-side convergence signal). How much of the mask
lies on the true patch is printed beside it as a diagnostic only: nothing here is chosen from
it (the true trigger is the known-attack setting's information).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip/inversion_probe.py \\
        --model runs/clip/bench96/badnets --classes 0,4 --steps 100,400 --batch 8,16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import planted_square, probe_parts  # noqa: E402

from unbackdoor.clip.defenses.common import FrozenText, as_pairs, head  # noqa: E402
from unbackdoor.clip.model.store import load_clip  # noqa: E402
from unbackdoor.inversion.invert import InversionConfig, invert  # noqa: E402
from unbackdoor.utils.io import atomic_write_json  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/clip/bench96/badnets")
    ap.add_argument("--classes", default="0,4")
    ap.add_argument("--steps", default="100,400", help="comma-separated inversion lengths")
    ap.add_argument("--batch", default="8,16", help="images per class and step, one per length")
    ap.add_argument("--out", default=str(HERE / "inversion_probe.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    clip, _ = load_clip(a.model)
    attack = json.loads((Path(a.model) / "attack.json").read_text())
    train, _val = probe_parts(0)
    pairs = as_pairs(train, 0)
    zs = head(clip, pairs, None)
    classes = [int(c) for c in a.classes.split(",")]
    patch = planted_square(attack)  # the true patch's place, for the diagnostic column only
    rows = []
    with FrozenText(clip):
        for steps, batch in zip(
            [int(s) for s in a.steps.split(",")], [int(b) for b in a.batch.split(",")], strict=True
        ):
            cfg = replace(InversionConfig(), steps=steps, batch_size=batch)
            t0 = time.perf_counter()
            res = invert(zs, pairs, cfg, classes=classes, desc=f"probe {steps}x{batch}")
            mask = res.family.mask.detach().reshape(len(classes), 32, 32)
            for i, k in enumerate(classes):
                m = mask[i]
                row = {
                    "steps": steps,
                    "batch": batch,
                    "class": k,
                    "size": float(res.sizes[i]),
                    "fooling": float(res.fooling[i]),
                    "mask_on_true_patch": float((m * patch).sum() / m.sum().clamp_min(1e-9)),
                    # every 20 steps: (step, mask size, fooling rate, NC's lambda)
                    "trail": [
                        (h["step"], h["size"][i], h["fooling"][i], h["lambda"][i])
                        for h in res.history
                    ],
                    "seconds": time.perf_counter() - t0,
                }
                rows.append(row)
                print({k2: v for k2, v in row.items() if k2 != "trail"}, flush=True)
    atomic_write_json(Path(a.out), {"model": a.model, "rows": rows})


if __name__ == "__main__":
    main()
