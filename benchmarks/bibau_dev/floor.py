"""Re-tuning floors on the dev side: the never-backdoored dev twin re-tuned with the dev Blended
and dev BadNets triggers (appends to ``results.jsonl``; rows ``floor_dev_*`` of the README).

    python benchmarks/bibau_dev/floor.py [dev_wanet ...]   # default: dev_blended dev_badnets
"""

import json
import sys
import time
from pathlib import Path

import torch

from unbackdoor.attacks.store import load_attack
from unbackdoor.data import load_dataset
from unbackdoor.eval.retune import RetuneConfig, retune_attack
from unbackdoor.models import load_model

torch.set_num_threads(1)
HERE = Path("benchmarks/bibau_dev")
from dev_model import RUNS  # noqa: E402  (this folder is on sys.path)

split = torch.load(RUNS / "dev_split.pt", weights_only=True)
train = load_dataset("cifar10", "train")
tr = train.subset(split["train_idx"], "cifar10")
dev = train.subset(split["dev_idx"], "cifar10")
clean, _ = load_model(RUNS / "dev_clean")
for name in sys.argv[1:] or ("dev_blended", "dev_badnets"):
    rec = load_attack(RUNS / name)
    t = time.time()
    r = retune_attack(clean, tr, dev, rec, RetuneConfig(seed=0))
    row = {
        "tag": f"floor_{name}",
        "model": "dev_clean",
        "trigger_of": name,
        "retune": {"ca": round(r.after.clean_acc, 4), "asr": round(r.after.asr, 4)},
        "time": round(time.time() - t),
    }
    print(json.dumps(row), flush=True)
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
