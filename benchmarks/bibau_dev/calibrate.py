"""Calibrate BI-BAU's "is there a backdoor at all?" decision, without the test models.

    python benchmarks/bibau_dev/calibrate.py          # -> calibration.json, calibration.md

BI-BAU's first blind inversion gives every class the size of the cheapest trigger that reaches
it; Neural Cleanse flags the smallest as a backdoor target when its anomaly index (distance below
the median in MADs) exceeds 2. That threshold was derived for one class, but the decision takes
the largest of K indices, and with K = 10 the MAD itself rests on ten numbers: under a
no-backdoor null the largest index often exceeds 2. This script measures both sides:

- the null distribution of the largest index among K classes, by simulation (Gaussian log
  sizes; the quantiles depend only on K);
- the first inversion of development models, never the benchmark's test models: the CIFAR-10
  dev BadNets model and its never-backdoored twin (``dev_model.py``, 45k training images,
  defender data drawn from those), and the MNIST zoo's clean model and its backdoored models,
  with 5% of the training set (CIFAR-10 also with 500 images), for both trigger families.

For each it records the largest anomaly index, the class, whether that class is the planted
target, its fooling rate and the effect size: how many times smaller the class's trigger is than
the median class's (mask family), or how many times more images the budget moves (additive).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import md_table, provenance  # noqa: E402

from unbackdoor.attacks.store import load_attack  # noqa: E402
from unbackdoor.bench.cells import zoo_model  # noqa: E402
from unbackdoor.data import load_dataset  # noqa: E402
from unbackdoor.inversion import InversionConfig, invert, invert_calibrated  # noqa: E402
from unbackdoor.models import load_model  # noqa: E402
from unbackdoor.unlearn import split_defender_data  # noqa: E402
from unbackdoor.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
from dev_model import RUNS  # noqa: E402  (this folder is on sys.path)

CACHE = RUNS / "calibration"
MNIST_ATTACKS = ["badnets", "blended", "wanet"]  # the rest were not run (CPU time)
FAMILIES = ["mask_pattern", "additive"]
MIN_EFFECT = 4.0  # BI-BAU's default min_effect, fixed before these numbers were read


def null_quantiles(k: int, n: int = 200_000, seed: int = 0) -> dict[str, float]:
    """The largest MAD anomaly index among ``k`` i.i.d. Gaussian log sizes: its quantiles and
    how often it exceeds NC's threshold of 2."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k, generator=g)
    med = s.median(1).values
    mad = 1.4826 * (s - med[:, None]).abs().median(1).values
    top = (med - s.min(1).values) / mad
    out = {f"q{int(100 * q)}": round(float(top.quantile(q)), 2) for q in (0.5, 0.9, 0.95, 0.99)}
    return {**out, "p_above_2": round(float((top > 2).double().mean()), 3)}


def models() -> list[tuple[str, str, Path, object, int | None]]:
    """(name, dataset, model dir, training data, planted target) of every calibration model."""
    split = torch.load(RUNS / "dev_split.pt", weights_only=True)
    cifar = load_dataset("cifar10", "train").subset(split["train_idx"], "cifar10")
    mnist = load_dataset("mnist", "train")
    out = [
        ("cifar10 dev clean", "cifar10", RUNS / "dev_clean", cifar, None),
        ("cifar10 dev badnets", "cifar10", RUNS / "dev_badnets", cifar, 0),
    ]
    for attack in [None, *MNIST_ATTACKS]:
        path, _ = zoo_model("mnist", "small_cnn", attack)
        target = None if attack is None else load_attack(path).policy.target
        out.append((f"mnist {attack or 'clean'}", "mnist", path, mnist, target))
    return out


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, dataset, path, train, target in models():
        model, _ = load_model(path)
        model.eval()
        # MNIST at 5% only (its detection is not in question); CIFAR-10 also at 500 images
        for n in (3000,) if dataset == "mnist" else (2500, 500):
            data = split_defender_data(train.sample(n, 7919), 0.2, 0)[0]
            for family in FAMILIES:
                stem = f"{name.replace(' ', '_')}_{n}_{family}"
                t0 = time.perf_counter()

                def cached(model, data, cfg, stem=stem, **kw):  # one cache file per budget
                    key = CACHE / (stem + ("" if cfg.eps == 0.1 else f"_eps{cfg.eps:g}") + ".pt")
                    if key.exists():
                        return torch.load(key, weights_only=False)  # our own cache
                    res = invert(model, data, cfg, **kw)
                    torch.save(res, key)
                    return res

                cfg = InversionConfig(
                    family=family, steps=300, targeted=True, bf16=dataset == "cifar10"
                )
                # BI-BAU's default: the additive budget halved while the median class saturates
                res, trail = invert_calibrated(
                    model, data, cfg, invert_fn=cached, seed=0, desc=f"{name} {n} {family}"
                )
                first = trail[0] if trail else None
                anomaly, effect = res.anomaly_index(), res.effect_size()
                k = int(anomaly.argmax())
                natural = [i for i, c in enumerate(res.classes) if c != target]
                nc_flag = bool(anomaly[k] >= 2 and res.fooling[k] >= 0.5)
                row = {
                    "model": name,
                    "samples": n,
                    "family": family,
                    "max_anomaly": round(float(anomaly.max()), 2),
                    "class": res.classes[k],
                    "planted_target": target,
                    "is_target": target is not None and res.classes[k] == target,
                    "fooling": round(float(res.fooling[k]), 3),
                    "effect": round(float(effect[k]), 2),
                    "largest_natural_effect": round(float(effect[natural].max()), 2),
                    "flag_nc": nc_flag,
                    "flag_bibau": res.verdict(2.0, MIN_EFFECT).found,  # BI-BAU's rule
                    "target_anomaly": None
                    if target is None
                    else round(float(anomaly[res.classes.index(target)]), 2),
                    "anomaly": [round(float(a), 2) for a in anomaly],
                    "sizes": [round(float(s), 2) for s in res.sizes],
                    "fooling_all": [round(float(f), 3) for f in res.fooling],
                    "seconds": round(time.perf_counter() - t0, 1),
                    "eps_trail": trail,
                    "eps0.1_median_fooling": None if first is None else first["median_fooling"],
                }
                rows.append(row)
                print(json.dumps({k: row[k] for k in list(row)[:10]}), flush=True)
    result = {"null": {k: null_quantiles(k) for k in (10,)}, "rows": rows, **provenance(0)}
    atomic_write_json(HERE / "calibration.json", result)
    table = [
        [
            r["model"],
            r["samples"],
            r["family"],
            r["max_anomaly"],
            r["class"],
            "-" if r["planted_target"] is None else r["planted_target"],
            "-" if r["target_anomaly"] is None else r["target_anomaly"],
            f"{100 * r['fooling']:.0f}%",
            f"{r['effect']:.1f}x",
            f"{r['largest_natural_effect']:.1f}x",
            "yes" if r["flag_nc"] else "no",
            "yes" if r["flag_bibau"] else "no",
        ]
        for r in rows
    ]
    head = [
        "model",
        "samples",
        "family",
        "largest index",
        "its class",
        "planted target",
        "target's index",
        "its fooling",
        "its effect",
        "largest natural effect",
        "old rule (index >= 2, fooling >= 50%) flags",
        f"BI-BAU (index >= 2, effect >= {MIN_EFFECT:g}x; masks: fooling >= 50%) flags",
    ]
    text = (
        "# Calibration of BI-BAU's detection (development models only)\n\n"
        f"Produced by `python benchmarks/bibau_dev/calibrate.py` on {result['date']}; see\n"
        "README.md for what it means. The largest of K=10 anomaly indices under a Gaussian\n"
        f'no-backdoor null (simulated): {json.dumps(result["null"][10])}. "effect": how\n'
        'many times cheaper than the median class; "natural": classes other than the\n'
        "planted target.\n\n" + md_table(head, table) + "\n"
    )
    atomic_write_text(HERE / "calibration.md", text)


if __name__ == "__main__":
    main()
