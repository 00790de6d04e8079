"""Defenses on the zoo's backdoored models: CA, ASR, RA, DER, RA-ASR (re-tuning), cost.

    python benchmarks/defenses/run.py --dataset mnist --attacks badnets,blended --defenses bibau,ft

For each attack, the backdoored model comes from the zoo (trained with the default recipe at the
attack's usual rate, target 0, as in ``benchmarks/attacks``); each defense gets the same
defender data (5% of the training set unless ``--clean-samples``) and seed. The re-tuning
attack is run on the purified model, on the unpurified backdoored one (ceiling) and on the
never-backdoored model (floor). Writes ``<dataset>.json``/``<dataset>.md`` beside this file;
the JSON is updated after every cell, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attacks"))
from common import md_table, provenance  # noqa: E402
from run import cell as zoo_cell  # noqa: E402  (benchmarks/attacks/run.py)

from unbackdoor.api import evaluate_artifact, retune_artifact  # noqa: E402
from unbackdoor.eval.metrics import defense_effectiveness_rate  # noqa: E402
from unbackdoor.eval.retune import RetuneConfig  # noqa: E402
from unbackdoor.train.recipes import DEFAULT_MODEL  # noqa: E402
from unbackdoor.unlearn import unlearn_artifact  # noqa: E402
from unbackdoor.utils.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--attacks", default="badnets")
    ap.add_argument("--defenses", default="bibau,ft")
    ap.add_argument("--clean-samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = DEFAULT_MODEL[args.dataset]
    tag = args.dataset + (f"_n{args.clean_samples}" if args.clean_samples else "")
    out_json = HERE / f"{tag}.json"
    results = read_json(out_json) if out_json.exists() else {"rows": {}}
    retune_cfg = RetuneConfig(seed=args.seed)
    clean = zoo_cell(args.dataset, model, None, args.seed, None)
    for attack in args.attacks.split(","):
        bd = zoo_cell(args.dataset, model, attack, args.seed, None)
        bd_path = Path(bd["path"])
        key = f"{attack}/backdoored"
        if key not in results["rows"]:
            floor = retune_artifact(clean["path"], config=retune_cfg, attack_from=bd_path).after.asr
            ceil = retune_artifact(bd_path, config=retune_cfg).after.asr
            results["rows"][key] = {
                "attack": attack,
                "defense": "none",
                "clean_acc": bd["clean_acc"],
                "asr": bd["asr"],
                "robust_acc": bd["robust_acc"],
                "retune_asr": ceil,
                "clean_floor_retune_asr": floor,
            }
        for defense in args.defenses.split(","):
            key = f"{attack}/{defense}"
            if key in results["rows"] and "error" not in results["rows"][key]:
                continue
            out = HERE / "runs" / tag / attack / defense
            try:
                _, report = unlearn_artifact(
                    bd_path,
                    defense,
                    out=out,
                    overwrite=True,
                    clean_samples=args.clean_samples,
                    seed=args.seed,
                )
                m = evaluate_artifact(out)
                r = retune_artifact(out, config=retune_cfg)
                results["rows"][key] = {
                    "attack": attack,
                    "defense": defense,
                    "clean_acc": m.clean_acc,
                    "asr": m.asr,
                    "robust_acc": m.robust_acc,
                    "der": defense_effectiveness_rate(
                        bd["asr"], m.asr, bd["clean_acc"], m.clean_acc
                    ),
                    "retune_asr": r.after.asr,
                    "retune_curve": r.curve,
                    "wall_time": report.wall_time,
                    "peak_memory_mb": report.peak_memory_mb,
                    "clean_samples_used": report.clean_samples_used,
                    "backdoor_found": report.backdoor_found,
                    "suspected_target": report.suspected_target,
                    "command": provenance(args.seed)["command"],
                    "date": provenance(args.seed)["date"],
                    "load_average": os.getloadavg(),
                }
            except Exception as e:  # noqa: BLE001  (record and go on)
                results["rows"][key] = {
                    "attack": attack,
                    "defense": defense,
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(limit=6),
                }
            results["provenance"] = provenance(args.seed)
            results["retune_config"] = retune_cfg.__dict__
            atomic_write_json(out_json, results)
            print(
                key,
                {
                    k: results["rows"][key].get(k)
                    for k in ("clean_acc", "asr", "retune_asr", "wall_time", "error")
                },
                file=sys.stderr,
            )
    write_markdown(tag, model, results)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def write_markdown(tag: str, model: str, results: dict) -> None:
    p = results["provenance"]
    rc = results["retune_config"]
    rows = []
    for r in results["rows"].values():
        if "error" in r:
            rows.append(
                [
                    r["attack"],
                    r["defense"],
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"failed: {r['error'][:80]}",
                ]
            )
            continue
        rows.append(
            [
                r["attack"],
                r["defense"],
                pct(r["clean_acc"]),
                pct(r["asr"]),
                pct(r["robust_acc"]),
                f"{r['der']:.3f}" if "der" in r else "-",
                pct(r.get("retune_asr")),
                f"{r['wall_time']:.0f} s" if "wall_time" in r else "-",
                r.get("clean_samples_used", "-"),
                (
                    f"floor (never backdoored): {pct(r['clean_floor_retune_asr'])}"
                    if "clean_floor_retune_asr" in r
                    else f"found={r.get('backdoor_found')}, target={r.get('suspected_target')}"
                )
                + (f"; {r['note']}" if r.get("note") else ""),
            ]
        )
    text = f"""# Defenses on {tag} ({model})

Last run: `{p["command"]}` on {p["date"]}; each row's own command and date are in `{tag}.json` ({
        p["cpu"]
    }, {p["hardware"]["cpu_count"]} cores,
torch {p["versions"]["torch"]}). RA-ASR: ASR after the re-tuning attack ({rc["samples"]} training
samples, {100 * rc["poison_rate"]:g}% poisoned with the attack's trigger, {rc["epochs"]} epochs,
Adam lr {rc["lr"]}, batch {rc["batch_size"]}). Raw numbers and re-tuning curves: `{tag}.json`.

{
        md_table(
            ["attack", "defense", "CA", "ASR", "RA", "DER", "RA-ASR", "time", "samples", "notes"],
            rows,
        )
    }
"""
    atomic_write_text(HERE / f"{tag}.md", text)


if __name__ == "__main__":
    main()
