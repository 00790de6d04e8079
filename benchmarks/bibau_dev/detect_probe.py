"""Why does BI-BAU's blind detection miss some Blended dev twins at 500 images? (session 29)

    DEV_MODEL=dev_mnist_blended_s3 python benchmarks/bibau_dev/detect_probe.py 500
    FAMILIES=mask_pattern,additive,warp DEV_MODEL=dev_mnist_clean_s13 python ... 3000

Runs the additive family's inversion (``FAMILIES``: a comma-separated list, each run on its
own), as BI-BAU's detection does (same defender draw as ``tune.py``, 7919; the same 80/20
split as ``unlearn``, seed 0), and prints the numbers of the target (none for a clean model),
of the most anomalous class and of the class with the largest effect: anomaly index, effect
size (how many times cheaper than the median class) and fooling rate, against the thresholds
(index 2, effect 4x), and whether the same inversion is found under the defaults and with a
candidate ``min_fooling`` (``CANDIDATE_MIN_FOOLING``, 0.2). A diagnosis on MNIST dev twins; it
chooses nothing by itself.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from dev_model import RUNS, split_path  # noqa: E402  (this folder is on sys.path)

from unbackdoor.attacks.store import has_attack, load_attack
from unbackdoor.data import load_dataset
from unbackdoor.defenses.bibau import BIBAU
from unbackdoor.inversion.detect import detect_with
from unbackdoor.models import load_model
from unbackdoor.unlearn import split_defender_data


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    name = os.environ.get("DEV_MODEL", "dev_mnist_blended")
    split = torch.load(split_path("mnist"), weights_only=True)
    train = load_dataset("mnist", "train")
    tr = train.subset(split["train_idx"], "mnist")
    model, _ = load_model(RUNS / name)
    target = load_attack(RUNS / name).policy.target if has_attack(RUNS / name) else None
    part, _ = split_defender_data(tr.sample(n, 7919), 0.2, 0)
    families = tuple(os.environ.get("FAMILIES", "additive").split(","))
    candidate = float(os.environ.get("CANDIDATE_MIN_FOOLING", "0.2"))
    defaults = BIBAU()
    for fam in families:  # each family on its own, as detection would read it
        det = detect_with(defaults, model, part, families=(fam,), seed=0, desc=fam)
        res = det.result
        anomaly, effect = res.anomaly_index(), res.effect_size()
        top = int(anomaly.argmax())

        def stats(k: int, res=res, anomaly=anomaly, effect=effect) -> dict:
            return {
                "class": int(res.classes[k]),
                "anomaly": round(float(anomaly[k]), 2),
                "effect": round(float(effect[k]), 2),
                "fooling": round(float(res.fooling[k]), 3),
            }

        strongest = int(effect.argmax())
        row = {
            "model": name,
            "n": n,
            "train_images": len(part),
            "family": fam,
            "found": det.verdict.found,
            # the same inversion judged with a candidate ``min_fooling`` (session 30)
            "candidate_min_fooling": candidate,
            "found_with_candidate": res.verdict(
                defaults.anomaly_threshold, defaults.min_effect, defaults.strong_effect, candidate
            ).found,
            "eps_trail": det.eps_trail,
            "target": None if target is None else stats(list(res.classes).index(target)),
            "most_anomalous": stats(top),
            "largest_effect": stats(strongest),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
