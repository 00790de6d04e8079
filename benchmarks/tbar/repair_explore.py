"""Held-out exploration behind TBAR's ``repair_epochs`` default (issue 5): defender data only.

    python benchmarks/tbar/repair_explore.py benchmarks/tbar/runs/cifar10/seed0/badnets_finetune

For the fine-tuning-regime BadNets model built by ``run.py``, with the defender data and the
split ``unlearn`` uses (5% of the training set, 20% held out, seed 0), the known trigger and the
then default vector (target projection, BN + bias recalibration, no repair), prints the held-out
CA and ASR (%) of ``theta_b - alpha tau`` for each alpha: recalibrated only (``recal``), then
also fine-tuned on the defender's training part for 2 or 5 epochs at lr 0.01 (``ft2``, ``ft5``).
No test data is read. The run of 2026-11-23 is in ``repair_explore.txt``.
"""

import copy
import sys

import torch

from unbackdoor.attacks.store import load_attack
from unbackdoor.defenses.tbar import TBAR
from unbackdoor.eval.metrics import evaluate
from unbackdoor.models import load_model
from unbackdoor.train import train
from unbackdoor.unlearn import defender_data, split_defender_data
from unbackdoor.utils.runinfo import seed_everything

mdir = sys.argv[1]
model, manifest = load_model(mdir, torch.device("cpu"))
train_part, val = split_defender_data(defender_data(manifest, None, None, 0.05, 0), 0.2, 0)
defense = TBAR(seed=0, plot=False, repair_epochs=0, device="cpu")
seed_everything(0)
spec, _, _ = defense.trigger(model, train_part, load_attack(mdir), torch.device("cpu"))
tau = defense.trigger_vector(model, train_part, spec)


def held_out(m: torch.nn.Module) -> tuple[float, float]:
    r = evaluate(m, val, trigger=spec.stamp, attack_labels=spec.labels)
    return round(r.clean_acc * 100, 1), round((r.asr or 0) * 100, 1)


print("alpha 0", held_out(model), flush=True)
for alpha in [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]:
    recal = defense.repaired(model, tau, alpha, train_part)
    row = {"alpha": alpha, "recal": held_out(recal)}
    for epochs in (2, 5):
        repaired = copy.deepcopy(recal)
        train(repaired, train_part, defense._train_config(epochs, 0.01), desc="repair")
        row[f"ft{epochs}"] = held_out(repaired)
    print(row, flush=True)
