"""Exact purification on a dev model: unlearning with the attack's *true* trigger (an oracle).

    RETUNE=1 DEV_MODEL=dev_lf python benchmarks/bibau_dev/oracle_ep.py TAG N EPOCHS LR

A diagnosis, never a defense and never a choice of defaults: it reads the trigger from the dev
model's ``attack.json``. Min et al. (NeurIPS 2024, "Uncovering, explaining, and mitigating the
superficial safety of backdoor defense") call this EP: fine-tuning on the defender's clean
images plus the same images stamped with the real trigger under their true labels. If EP
leaves a backdoor that re-tuning does not bring back while BI-BAU's found trigger leaves one
that it does, the gap lies in what the inversion finds, not in the unlearning step.
Scored as ``tune.py`` scores (the dev model's 5,000 held-out training images); one line is
appended to ``results.jsonl`` with ``method`` "oracle_ep".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from unbackdoor.attacks.store import load_attack
from unbackdoor.data import load_dataset
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.eval.metrics import evaluate
from unbackdoor.eval.retune import RetuneConfig, retune_attack
from unbackdoor.models import load_model
from unbackdoor.train import TrainConfig, train

HERE = Path(__file__).resolve().parent
from dev_model import RUNS, split_path  # noqa: E402  (this folder is on sys.path)


def with_true_stamps(data: ImageDataset, trigger) -> ImageDataset:
    """``data`` plus its copy stamped with the true trigger, labels unchanged (the EP set)."""
    with torch.no_grad():
        x = trigger(data.float_images(), torch.arange(len(data))).clamp(0, 1)
    stamped = (x * 255).round().to(torch.uint8)
    return ImageDataset(
        torch.cat([data.images, stamped]),
        torch.cat([data.labels, data.labels]),
        list(data.class_names),
        f"{data.name}+true stamps",
        dict(data.meta),
    )


def main() -> None:
    tag, n, epochs, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    split = torch.load(split_path("cifar10"), weights_only=True)
    train_set = load_dataset("cifar10", "train")
    tr = train_set.subset(split["train_idx"], "cifar10")
    dev = train_set.subset(split["dev_idx"], "cifar10")
    name = os.environ.get("DEV_MODEL", "dev_lf")
    model, _ = load_model(RUNS / name)
    rec = load_attack(RUNS / name)

    def score(m: torch.nn.Module) -> dict:
        x = evaluate(m, dev, trigger=rec.trigger, attack_labels=rec.attack_labels)
        return {"ca": round(x.clean_acc, 4), "asr": round(x.asr, 4)}

    before = score(model)
    clean = tr.sample(n, 7919)  # tune.py's draw
    ep = with_true_stamps(clean, rec.trigger)
    t0 = time.time()
    cfg = TrainConfig(epochs=epochs, lr=lr, bf16=True, seed=0, schedule="linear", warmup=0.0)
    train(model, ep, cfg, desc="oracle EP")
    after = score(model)
    r = retune_attack(model, tr, dev, rec, RetuneConfig(seed=0))
    row = {
        "tag": tag,
        "method": "oracle_ep",
        "model": name,
        "opts": {"epochs": epochs, "lr": lr},
        "n": n,
        "draw": 7919,
        "before": before,
        "after": after,
        "drop": round(100 * (before["ca"] - after["ca"]), 2),
        "time": round(time.time() - t0),
        "retune": {"ca": round(r.after.clean_acc, 4), "asr": round(r.after.asr, 4)},
    }
    print(json.dumps(row), flush=True)
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
