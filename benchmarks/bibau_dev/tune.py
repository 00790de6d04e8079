"""Score one BI-BAU configuration on the development model (see ``dev_model.py``).

    python benchmarks/bibau_dev/tune.py TAG '{"lr": 0.007, "stamped_target": "teacher"}'
    RETUNE=1 python benchmarks/bibau_dev/tune.py ...     # also the re-tuning attack
    SAMPLE_SEED=1 python benchmarks/bibau_dev/tune.py ...  # another draw of the defender's images
    DEV_MODEL=dev_blended python benchmarks/bibau_dev/tune.py ...   # another dev model
    DEV_DATASET=mnist DEV_MODEL=dev_mnist_badnets python benchmarks/bibau_dev/tune.py TAG '{}' 1000
    DEV_DATASET=mnist DEV_MODEL=dev_mnist_clean_s16 ...  # a clean twin: CA only
    METHOD=tbar DEV_DATASET=mnist ...  # TBAR (unknown attack) instead of BI-BAU

The defender's data is 2,500 images of the dev model's own 45,000 training images; clean accuracy
and ASR are measured on the 5,000 held-out training images, never on the CIFAR-10 test set.
Appends one line to ``results.jsonl``. (The logged runs reused the first blind inversion across
configurations: it depends only on the model, the data and the seed, which they share.)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from unbackdoor.attacks.store import has_attack, load_attack
from unbackdoor.bench.store import cpu_name
from unbackdoor.data import load_dataset
from unbackdoor.eval.metrics import evaluate
from unbackdoor.eval.retune import RetuneConfig, retune_attack
from unbackdoor.models import load_model
from unbackdoor.unlearn import unlearn

HERE = Path(__file__).resolve().parent
from dev_model import RUNS, split_path  # noqa: E402  (this folder is on sys.path)


def main() -> None:
    tag, opts = sys.argv[1], json.loads(sys.argv[2])
    n_clean = int(sys.argv[3]) if len(sys.argv) > 3 else 2500
    dataset = os.environ.get("DEV_DATASET", "cifar10")  # mnist: the dev_mnist_* models
    split = torch.load(split_path(dataset), weights_only=True)
    train = load_dataset(dataset, "train")
    tr = train.subset(split["train_idx"], dataset)
    dev = train.subset(split["dev_idx"], dataset)
    dev_model = os.environ.get("DEV_MODEL", "dev_badnets")
    model, _ = load_model(RUNS / dev_model)
    weights_id = hashlib.sha256((RUNS / dev_model / "model.safetensors").read_bytes()).hexdigest()
    weights_id = weights_id[:12]
    # a never-backdoored twin (``--clean``) has no attack: clean accuracy only, no re-tuning
    rec = load_attack(RUNS / dev_model) if has_attack(RUNS / dev_model) else None

    def score(m: torch.nn.Module) -> dict:
        if rec is None:
            return {"ca": round(evaluate(m, dev).clean_acc, 4), "asr": None}
        x = evaluate(m, dev, trigger=rec.trigger, attack_labels=rec.attack_labels)
        return {"ca": round(x.clean_acc, 4), "asr": round(x.asr, 4)}

    before = score(model)
    t0 = time.time()
    # SAMPLE_SEED draws another set of defender images (the logged runs before session 14: 7919)
    draw = 7919 + int(os.environ.get("SAMPLE_SEED", "0"))
    method = os.environ.get("METHOD", "bibau")  # tbar: the same twin and draw through TBAR
    clean, rep = unlearn(model, tr.sample(n_clean, draw), method, seed=0, **{"bf16": True, **opts})
    after = score(clean)
    retuned = None
    if os.environ.get("RETUNE") == "1" and rec is not None:
        r = retune_attack(clean, tr, dev, rec, RetuneConfig(seed=0))
        retuned = {"ca": round(r.after.clean_acc, 4), "asr": round(r.after.asr, 4)}
    d = rep.diagnostics
    row = {
        "tag": tag,
        "method": method,
        "model": dev_model,
        # which training of that name (dev models are retrained on each new machine) and where
        "weights": weights_id,
        "cpu": cpu_name(),
        "opts": opts,
        "n": n_clean,
        "draw": draw,
        "before": before,
        "after": after,
        "drop": round(100 * (before["ca"] - after["ca"]), 2),
        "time": round(time.time() - t0),
        "found": rep.backdoor_found,
        "family": d.get("family"),
        "target": rep.suspected_target,
        "retune": retuned,
        "fool": d.get("fooling_per_round"),
        "val": d.get("val_clean_acc_per_round"),
        "val_before": d.get("val_clean_acc_before"),  # the held-out guard's reference
        "lr_halvings": d.get("lr_halvings"),  # rounds the guard redid at a lower rate
        "stopped": d.get("stopped"),
        "companion": d.get("companion"),
        "shared": d.get("shared_rate_per_round"),
        # the negate_first pre-step (alpha, held-out CA and ASR after it), without its sweep
        "negate": {k: v for k, v in d["negate_first"].items() if k != "alpha_sweep"}
        if "negate_first" in d
        else None,
    }
    print(json.dumps(row), flush=True)
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
