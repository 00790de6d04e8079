"""Every trigger family's verdict on a dev model, each family on its own (session 37).

    python benchmarks/bibau_dev/family_probe.py dev_wanet_s2 dev_sig dev_wanet dev_lf
    FAMILIES=smooth python benchmarks/bibau_dev/family_probe.py dev_lf   # some families only

BI-BAU's blind detection stops at the first family that flags a class (mask, then additive,
then warp). On two WaNet test trainings the additive family flagged a wrong class before the
warp family, which finds WaNet's target, was tried (``benchmarks/cpu_bibau``, sessions 25 and
36). This script gives the verdict of *each* family on the dev models (never a benchmark model),
so that a rule for choosing among families that both flag can be judged on them before it
touches a benchmark model (the rule: ``README.md``, session 37). Same settings and defender
images as ``budget_prior_dev.py``: ``BIBAU(bf16=True)`` (the benchmark's), 2,500 images of the
dev model's own training split (``sample(2500, 7919)``), of which detection sees the 80% that
BI-BAU keeps after holding out 20%. The planted target is read from ``attack.json`` only to
print whether a verdict names it; the rule never sees it. Rows go to ``family_probe.jsonl``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import emit_row, provenance  # noqa: E402
from dev_model import RUNS  # noqa: E402  (this folder is on sys.path)

from unbackdoor.attacks.store import has_attack, load_attack  # noqa: E402
from unbackdoor.data import load_dataset  # noqa: E402
from unbackdoor.defenses.bibau import BIBAU  # noqa: E402
from unbackdoor.inversion import invert  # noqa: E402
from unbackdoor.inversion.detect import detect_with  # noqa: E402
from unbackdoor.models import load_model  # noqa: E402
from unbackdoor.unlearn import split_defender_data  # noqa: E402

HERE = Path(__file__).resolve().parent
#: the smooth family (new in session 37) is probed too, for the LF question; the rule for
#: choosing among flagged families reads only the first three
FAMILIES = ("mask_pattern", "additive", "warp", "smooth")


def probe_model(
    name: str, path: Path, data: Any, out: Path, *, seed: int = 0, families: str | None = None
) -> None:
    """Each family's verdict on the model in ``path`` (``families``: comma-separated; None:
    ``FAMILIES`` or the env variable), one row each in ``out``."""
    settings = BIBAU(bf16=True)
    model, _ = load_model(path)
    model.eval()
    target = load_attack(path).policy.target if has_attack(path) else None
    wanted = families or os.environ.get("FAMILIES", ",".join(FAMILIES))
    for fam in wanted.split(","):
        t0 = time.perf_counter()
        det = detect_with(
            settings,
            model,
            data,
            families=(fam,),
            auto_eps=settings.auto_eps,
            invert_fn=invert,
            seed=seed,
            desc=f"{name} {fam}",
        )
        res = det.result
        anomaly, effect = res.anomaly_index(), res.effect_size()
        at = list(res.classes).index(target) if target is not None else None
        row = {
            "model": name,
            "family": fam,
            "planted_target": target,
            "verdict": det.verdict.as_dict(),
            "target_stats": None
            if at is None
            else {
                "anomaly": round(float(anomaly[at]), 3),
                "effect": round(float(effect[at]), 3),
                "fooling": round(float(res.fooling[at]), 3),
            },
            "budgets": det.eps_trail,
            "images": len(data),
            "seconds": round(time.perf_counter() - t0, 1),
            "provenance": provenance(seed),
        }
        emit_row(row, out)


def main(names: list[str]) -> None:
    split = torch.load(RUNS / "dev_split.pt", weights_only=True)
    train = load_dataset("cifar10", "train").subset(split["train_idx"], "cifar10")
    data = split_defender_data(train.sample(2500, 7919), 0.2, 0)[0]
    for name in names:
        probe_model(name, RUNS / name, data, HERE / "family_probe.jsonl")


if __name__ == "__main__":
    main(sys.argv[1:])
