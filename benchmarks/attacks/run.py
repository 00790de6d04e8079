"""Attack catalogue benchmark (issue 3): every attack's clean accuracy and ASR.

    python benchmarks/attacks/run.py --dataset mnist
    python benchmarks/attacks/run.py --dataset cifar10 [--attacks badnets,blended]
    python benchmarks/attacks/run.py --dataset cifar10 --attacks label_consistent \
        --options '{"label_consistent": {"crafting_eps": 4}}'    # non-default settings

Each backdoored model is trained with the model's default recipe (the same as the clean
reference model) at the attack's usual poisoning rate (10% for poison-label attacks), target 0,
and cached in the zoo, so an interrupted run resumes where it stopped. Writes
``<dataset>.json`` and ``<dataset>.md`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import md_table, provenance, update_json  # noqa: E402

from unbackdoor.attacks import list_attacks  # noqa: E402
from unbackdoor.bench.cells import zoo_model  # noqa: E402
from unbackdoor.train.recipes import DEFAULT_MODEL  # noqa: E402
from unbackdoor.utils.io import atomic_write_text, read_json  # noqa: E402

HERE = Path(__file__).resolve().parent
POISON_LABEL_TARGET, CLEAN_LABEL_TARGET, CA_TOLERANCE = 0.95, 0.80, 0.015
IMAGE_TEXT_ONLY = {"badclip"}  # needs a CLIP model: benchmarked in benchmarks/clip


def catalogue() -> list[str]:
    """The classifier attacks of issue 3 (every registered attack but the CLIP-only ones)."""
    return [a for a in list_attacks() if a not in IMAGE_TEXT_ONLY]


def cell(
    dataset: str,
    model: str,
    attack: str | None,
    seed: int,
    epochs: int | None,
    options: dict | None = None,
    rate: float | None = None,
) -> dict:
    """One zoo model (10% poisoning, target 0; clean-label attacks capped by the target class,
    or ``rate``)."""
    t0 = time.perf_counter()
    path, config = zoo_model(
        dataset, model, attack, seed, epochs=epochs, options=options, rate=rate
    )
    metrics = read_json(path / "metrics.json")
    train = read_json(path / "train.json")
    return {
        **config,
        **metrics,
        "path": str(path),
        "train_seconds": train["wall_time"],
        "rate": train.get("rate"),
        "policy": (train.get("policy") or {}).get("kind"),
        "cover_rate": train.get("cover_rate"),
        "cached": time.perf_counter() - t0 < 0.5 * train["wall_time"],
    }


def verdict(row: dict, clean_acc: float) -> str:
    need = CLEAN_LABEL_TARGET if row["policy"] == "clean_label" else POISON_LABEL_TARGET
    problems = []
    if row["clean_acc"] < clean_acc - CA_TOLERANCE:
        problems.append(f"CA drop {100 * (clean_acc - row['clean_acc']):.1f} pt > 1.5")
    if row["asr"] < need:
        problems.append(f"ASR {100 * row['asr']:.1f}% < {100 * need:.0f}%")
    return "meets target" if not problems else "; ".join(problems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--model", default=None)
    ap.add_argument("--attacks", default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument(
        "--options", default="{}", help="JSON: attack name -> settings other than its defaults"
    )
    ap.add_argument(
        "--rates", default="{}", help="JSON: attack name -> poisoning rate other than its usual one"
    )
    args = ap.parse_args()
    options, rates = json.loads(args.options), json.loads(args.rates)
    model = args.model or DEFAULT_MODEL[args.dataset]
    names = catalogue() if args.attacks == "all" else args.attacks.split(",")
    out_json = HERE / f"{args.dataset}.json"
    clean = cell(args.dataset, model, None, args.seed, args.epochs)
    results: dict = {}
    for name in names:
        try:
            row = cell(
                args.dataset,
                model,
                name,
                args.seed,
                args.epochs,
                options.get(name),
                rates.get(name),
            )
            row["verdict"] = verdict(row, clean["clean_acc"])
        except Exception as e:  # noqa: BLE001  (record the failure, go on with the grid)
            row = {
                "attack": name,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=5),
            }
        results = record(out_json, clean, name, row, provenance(args.seed))
        print(
            name, {k: row.get(k) for k in ("clean_acc", "asr", "verdict", "error")}, file=sys.stderr
        )
    write_markdown(args.dataset, model, results or read_json(out_json))


def record(out_json: Path, clean: dict, name: str, row: dict, prov: dict) -> dict:
    """Store one attack's row with the command that made it; returns the whole file.

    Runs for different attacks may go on in parallel: the update re-reads the file under a
    lock, so no run drops the rows another wrote since it started.
    """
    row["command"], row["date"] = prov["command"], prov["date"]

    def update(results: dict) -> None:
        results["clean"] = clean
        results["rows"][name] = row
        results["provenance"] = prov
        commands = results.setdefault("commands", [])
        if prov["command"] not in commands:
            commands.append(prov["command"])

    return update_json(out_json, update, default=lambda: {"rows": {}, "notes": {}})


def write_markdown(dataset: str, model: str, results: dict) -> None:
    clean = results["clean"]
    p = results["provenance"]
    commands = results.get("commands") or [p["command"]]
    produced = ", ".join(f"`{c}`" for c in commands)
    rows = []
    for name, r in results["rows"].items():
        if "error" in r:
            rows.append([name, "-", "-", "-", "-", "-", "-", f"failed: {r['error']}"])
            continue
        note = results.get("notes", {}).get(name, "")
        label = name + (f" {json.dumps(r['options'])}" if r.get("options") else "")
        rows.append(
            [
                label,
                r["policy"],
                f"{r['rate']:g}",
                f"{100 * r['clean_acc']:.2f}%",
                f"{100 * (r['clean_acc'] - clean['clean_acc']):+.2f}",
                f"{100 * r['asr']:.2f}%",
                f"{100 * r['robust_acc']:.2f}%",
                f"{r['train_seconds'] / 60:.1f} min",
                r["verdict"] + (f" ({note})" if note else ""),
            ]
        )
    text = f"""# Attack catalogue on {dataset} ({model})

Produced by {produced} (each row's own command is in `{dataset}.json`),
last on {p["date"]} ({p["cpu"]}, {p["hardware"]["cpu_count"]} cores,
torch {p["versions"]["torch"]}). Every model uses {model}'s default recipe, target class 0,
seed {clean["seed"]}; the clean reference model reaches **{100 * clean["clean_acc"]:.2f}%** in
{clean["train_seconds"] / 60:.1f} min. Targets: CA within 1.5 points of the clean model, ASR
>= 95% (poison-label) or >= 80% (clean-label). Raw numbers: `{dataset}.json`.

{
        md_table(
            [
                "attack",
                "policy",
                "rate",
                "CA",
                "CA diff (pt)",
                "ASR",
                "RA",
                "train time",
                "verdict",
            ],
            rows,
        )
    }
"""
    missing = [a for a in catalogue() if a not in results["rows"]]
    if missing:
        text += (
            f"\nNot yet trained on {dataset} (rerun the command above to resume; the zoo keeps "
            f"finished models): {', '.join(missing)}.\n"
        )
    atomic_write_text(HERE / f"{dataset}.md", text)


if __name__ == "__main__":
    main()
