"""BI-BAU end to end on the MNIST Blended zoo model, with and without ``budget_prior``.

    OMP_NUM_THREADS=1 python benchmarks/bibau_dev/budget_prior_e2e.py \
        ~/.cache/unbackdoor/zoo/df92fd6fcd96a92b

Session 22's miss: ``unbackdoor.unlearn(model, mnist_train.sample(500, 0), "bibau", seed=0)``
found no backdoor and left ASR at 100%. This repeats that call with the default
(``budget_prior=True``) and with ``budget_prior=False`` and measures CA and ASR on the MNIST
test split with the model's recorded trigger. One JSON row per run on stdout; session 23's in
``budget_prior_e2e.jsonl`` beside this file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import unbackdoor
from unbackdoor.attacks.store import load_attack


def main(directory: str) -> None:
    torch.set_num_threads(1)
    path = Path(directory).expanduser()
    model, _ = unbackdoor.load_model(path)
    attack = load_attack(path)
    train = unbackdoor.load_dataset("mnist", split="train")
    test = unbackdoor.load_dataset("mnist", split="test")
    for prior in (True, False):
        t0 = time.perf_counter()
        purified, report = unbackdoor.unlearn(
            model, train.sample(500, 0), "bibau", seed=0, budget_prior=prior
        )
        m = unbackdoor.evaluate(
            purified, test, trigger=attack.trigger, attack_labels=attack.attack_labels
        )
        d = report.diagnostics
        row = {
            "budget_prior": prior,
            "backdoor_found": report.backdoor_found,
            "suspected_target": report.suspected_target,
            "family": d.get("family"),
            "family_verdicts": d.get("family_verdicts"),
            "clean_acc": m.clean_acc,
            "asr": m.asr,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
