"""TBAR benchmark (issue 5): where task-vector negation removes a backdoor and where it does not.

    python benchmarks/tbar/run.py --dataset mnist --attacks badnets
    python benchmarks/tbar/run.py --dataset cifar10 --attacks badnets,blended,wanet --device cuda

Two regimes on the same poisoned data (10% poisoned, target 0): the training set is split in
two stratified halves A and B;
- *fine-tuning* (the task-arithmetic regime TBAR assumes): a clean model pretrained on A is
  fine-tuned on the poisoned B (``attack_model(init=...)``) with the model's recipe at a
  learning rate scaled by ``--ft-lr-scale`` (0.2: a fine-tuning step, not a retraining);
- *from scratch*: the same architecture trained on the poisoned B from a random init.

Each backdoored model is purified by TBAR, known attack (the trigger from ``attack.json``) and
unknown attack (inverted trigger), as published (``plain``: no projection, no recalibration) and
with each improvement alone: (a) ``a_projection`` (projection off a clean-task vector) and
``a_target`` (off the target-class vector: the same images unstamped, labelled with the target),
(b) ``b_top_layers`` (layers ranked by relative norm), (c) ``c_linearized`` (tangent-space
fine-tuning), ``d_adam`` (Adam instead of SGD for the trigger fine-tune), ``e_recalibrate``
(BatchNorm statistics and output biases recalibrated on clean data after negation),
``ae_target_recal`` (``a_target`` + ``e_recalibrate``) and the ``default``: that plus a short clean
fine-tune of each negated candidate (``repair_epochs``), and for an inverted trigger the largest
alpha keeping the accuracy (``smallest_rule``: the smallest alpha whose estimated ASR is low).
All use the defender data ``unlearn`` uses (5% of the training set unless ``--clean-samples``)
and the same seed.
Reported: test CA, ASR, CA retention (CA after / CA before), the chosen alpha, the re-tuning
attack's ASR on the purified model (``evaluate --retune``'s defaults; the clean floor is the
pretrained clean model's), wall time, and fine-tuning on the same data (``ft``) for the cost
comparison. ``--curve`` adds the test-set trade-off curves (CA and ASR of the defense's output over
alpha, known attack, ``plain`` and ``default``) for both regimes, plotted in
``<dataset>_curve.png``; ``--sample-sizes`` the known-attack sweep over the defender's data size.
Writes ``<dataset>.json`` (after every cell, so an interrupted run resumes) and ``<dataset>.md``
(with ``<dataset>.notes.md`` appended, the reading of the numbers) beside this file; models and
purified models go to ``runs/`` (not committed).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import md_table, provenance  # noqa: E402

from unbackdoor.api import (  # noqa: E402
    evaluate_artifact,
    load_test_data,
    retune_artifact,
    train_model,
)
from unbackdoor.attacks.pipeline import attack_model  # noqa: E402
from unbackdoor.attacks.store import load_attack  # noqa: E402
from unbackdoor.data.registry import load_dataset  # noqa: E402
from unbackdoor.eval.metrics import evaluate  # noqa: E402
from unbackdoor.eval.retune import RetuneConfig, retune_attack  # noqa: E402
from unbackdoor.models import is_artifact, load_model  # noqa: E402
from unbackdoor.train.recipes import DEFAULT_MODEL, recipe  # noqa: E402
from unbackdoor.unlearn import defender_data, split_defender_data, unlearn_artifact  # noqa: E402
from unbackdoor.utils.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402

HERE = Path(__file__).resolve().parent
# for an inverted trigger: the alpha rule and blind detection before 11-23 (the paper's rule)
BEFORE_11_23 = {"alpha_rule": "smallest", "family": "mask_pattern"}
PLAIN = {"clean_projection": "none", "recalibrate": "none", "repair_epochs": 0, **BEFORE_11_23}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": PLAIN,
    "a_projection": {**PLAIN, "clean_projection": "task"},
    "a_target": {**PLAIN, "clean_projection": "target"},
    "b_top_layers": {**PLAIN, "top_layers": 0.8},
    "c_linearized": {**PLAIN, "linearized": True},
    "d_adam": {**PLAIN, "optimizer": "adam", "lr": 1e-3},
    "e_recalibrate": {**PLAIN, "recalibrate": "bn+bias"},
    # a_target + e_recalibrate: the default until 11-23
    "ae_target_recal": {"repair_epochs": 0, **BEFORE_11_23},
    # clean_projection="target", recalibrate="bn+bias", repair_epochs=5, refine_smallest=True;
    # the `default` rows stored before 2026-12-02 ran with refine_smallest=False (`grid_alpha`)
    "default": {},
    "grid_alpha": {"refine_smallest": False},
    # the default's alpha rule before 11-23 for an inverted trigger (known: same as default)
    "smallest_rule": {"alpha_rule": "smallest"},
    # the default's blind detection before 11-23: mask and pattern only, no additive fallback
    "mask_family": {"family": "mask_pattern"},
    # the default plus a consistency term to theta_b's clean outputs in the repair (12-02)
    "kd_repair": {"repair_distill": 1.0},
    # the default with the smallest alpha located by bisection below the grid point (12-02)
    "refine_smallest": {"refine_smallest": True},
}
UNKNOWN_ONLY = {"smallest_rule", "mask_family"}  # the same as the default with a given trigger
CURVE_VARIANTS = ("plain", "default")
CURVE_ALPHAS = [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0]


def names(csv: str) -> list[str]:
    """The non-empty names of a comma-separated option (``--variants ""`` runs none)."""
    return [n for n in csv.split(",") if n]


def halves(dataset: str, seed: int):
    """Stratified halves A (clean pretraining) and B (poisoned), named as the data set."""
    train = load_dataset(dataset, "train")
    a, b = train.split(0.5, seed)
    test = load_dataset(dataset, "test", class_names=train.class_names)
    return dataclasses.replace(a, name=dataset), dataclasses.replace(b, name=dataset), test


def models(args: argparse.Namespace, attack: str) -> dict[str, Path]:
    """The clean pretrained model and the backdoored ones of ``--regimes`` (cached under runs/)."""
    root = HERE / "runs" / args.dataset / f"seed{args.seed}"
    paths = {
        "clean": root / "clean_halfA",
        "finetune": root / f"{attack}_finetune",
        "scratch": root / f"{attack}_scratch",
    }
    wanted = ["clean", *names(args.regimes)]
    if all(is_artifact(paths[k]) for k in wanted):
        return paths
    half_a, half_b, test = halves(args.dataset, args.seed)
    model = DEFAULT_MODEL[args.dataset]
    opts = {"device": args.device}
    if not is_artifact(paths["clean"]):
        train_model(half_a, model, test_data=test, seed=args.seed, out=paths["clean"], **opts)
    for regime in wanted[1:]:
        if not is_artifact(paths[regime]):
            ft = regime == "finetune"
            attack_model(
                half_b,
                model,
                attack,
                test_data=test,
                rate=0.1,
                target=0,
                init=paths["clean"] if ft else None,
                seed=args.seed,
                out=paths[regime],
                overwrite=True,
                lr=recipe(model).lr * args.ft_lr_scale if ft else None,
                **opts,
            )
    return paths


def tradeoff_curve(model_dir: Path, args: argparse.Namespace, **tbar: Any) -> list[dict]:
    """Test-set CA and ASR of the defense's output over ``CURVE_ALPHAS`` (known attack).

    tau (projected and restricted as the options say) and the recalibration of each
    ``theta_b - alpha tau`` are exactly those of ``unlearn`` (same defender data, split, seed).
    """
    from unbackdoor.defenses.tbar import TBAR
    from unbackdoor.utils.runinfo import resolve_device, seed_everything

    dev = resolve_device(args.device)
    model, manifest = load_model(model_dir, dev)
    data = defender_data(manifest, None, args.clean_samples, 0.05, args.seed)
    train_part, _ = split_defender_data(data, 0.2, args.seed)
    record = load_attack(model_dir)
    defense = TBAR(seed=args.seed, device=args.device, **tbar)
    seed_everything(args.seed)
    spec, _, _ = defense.trigger(model, train_part, record, dev)
    tau = defense.trigger_vector(model, train_part, spec)
    test = load_test_data(manifest, None, "test")
    out = []
    for a in CURVE_ALPHAS:
        m = evaluate(
            defense.repaired(model, tau, a, train_part),
            test,
            trigger=record.trigger,
            attack_labels=record.attack_labels,
        )
        out.append({"alpha": a, "clean_acc": m.clean_acc, "asr": m.asr})
    return out


def save(results: dict, out_json: Path) -> None:
    """Write ``results``, keeping what other runs of this script added since it was read.

    Runs for different attacks may share ``out_json``; a row or curve this run holds wins.
    """
    if out_json.exists():
        disk = read_json(out_json)
        for part in ("rows", "curves"):
            for k, v in disk.get(part, {}).items():
                results[part].setdefault(k, v)
        for c in disk.get("commands", []):
            if c not in results.setdefault("commands", []):
                results["commands"].append(c)
    atomic_write_json(out_json, results)


def run_cell(results: dict, key: str, fn: Any, out_json: Path, *, redo_errors: bool = True) -> None:
    """Run ``fn`` unless ``key`` is done; record its row (or the error) and save the JSON."""
    row = results["rows"].get(key)
    if row is not None and "error" not in row:
        return
    try:
        results["rows"][key] = fn()
    except Exception as e:  # noqa: BLE001  (record and go on)
        results["rows"][key] = {
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=6),
        }
    save(results, out_json)
    short = {k: results["rows"][key].get(k) for k in ("clean_acc", "asr", "alpha", "error")}
    print(key, short, file=sys.stderr, flush=True)


def defend(
    model_dir: Path, out: Path, method: str, known: bool, args: argparse.Namespace, **options: Any
) -> dict:
    before = evaluate_artifact(model_dir)
    _, report = unlearn_artifact(
        model_dir,
        method,
        out=out,
        overwrite=True,
        clean_samples=args.clean_samples,
        known_attack=known,
        seed=args.seed,
        device=args.device,
        **options,
    )
    m = evaluate_artifact(out)
    d = report.diagnostics
    row = {
        "clean_acc": m.clean_acc,
        "asr": m.asr,
        "robust_acc": m.robust_acc,
        "clean_acc_before": before.clean_acc,
        "asr_before": before.asr,
        "retention": m.clean_acc / before.clean_acc,
        "alpha": d.get("alpha"),
        "alpha_rule": d.get("alpha_rule"),
        "val_sweep": d.get("alpha_sweep"),
        "backdoor_found": report.backdoor_found,
        "suspected_target": report.suspected_target,
        "anomaly_score": report.anomaly_score,
        "wall_time": report.wall_time,
        "clean_samples_used": report.clean_samples_used,
    }
    if args.retune:
        row["retune_asr"] = retune_artifact(out, config=RetuneConfig(seed=args.seed)).after.asr
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--attacks", default="badnets")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--modes", default="known,unknown")
    ap.add_argument("--regimes", default="finetune,scratch")
    ap.add_argument("--clean-samples", type=int, default=None)
    ap.add_argument("--sample-sizes", default="", help="e.g. 100,250,500,1000,2500")
    ap.add_argument("--curve", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--retune", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--ft-baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--bibau",
        action="store_true",
        help="BI-BAU (its defaults, bf16 as in benchmarks/cpu_bibau) on the same models too",
    )
    ap.add_argument(
        "--models-only",
        action="store_true",
        help="only build (or find) the clean, fine-tuned and from-scratch models, then stop",
    )
    ap.add_argument(
        "--ft-lr-scale",
        type=float,
        default=0.2,
        help="fine-tuning regime: the recipe's learning rate times this",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    unknown = set(names(args.variants)) - set(VARIANTS)
    if unknown or not set(names(args.modes)) <= {"known", "unknown"}:
        ap.error(
            f"--variants takes names from {sorted(VARIANTS)} (got {args.variants!r}); "
            f"--modes from known, unknown (got {args.modes!r})"
        )
    if not names(args.regimes) or not set(names(args.regimes)) <= {"finetune", "scratch"}:
        ap.error("--regimes: finetune, scratch or both")
    tag = args.dataset + (f"_n{args.clean_samples}" if args.clean_samples else "")
    out_json = HERE / f"{tag}.json"
    results = read_json(out_json) if out_json.exists() else {"rows": {}, "curves": {}}
    results.setdefault("curves", {})
    runs = HERE / "runs" / tag
    for attack in names(args.attacks):
        paths = models(args, attack)
        if args.models_only:
            print(attack, {k: str(v) for k, v in paths.items()}, flush=True)
            continue
        if f"{attack}/floor" not in results["rows"]:
            clean, _ = load_model(paths["clean"])
            backdoored = paths[names(args.regimes)[0]]  # same attack record in both
            _, manifest = load_model(backdoored)
            r = retune_attack(
                clean,
                load_test_data(manifest, None, "train"),
                load_test_data(manifest, None, "test"),
                load_attack(backdoored),
                RetuneConfig(seed=args.seed),
            )
            results["rows"][f"{attack}/floor"] = {
                "clean_acc": r.before.clean_acc,
                "asr": r.before.asr,
                "retune_asr": r.after.asr,
            }
        for regime in names(args.regimes):
            mdir, base = paths[regime], f"{attack}/{regime}"
            cell = partial(run_cell, results, out_json=out_json)
            cell(f"{base}/none", partial(_undefended, mdir, args))
            for mode in names(args.modes):
                for v in names(args.variants):
                    if mode == "known" and v in UNKNOWN_ONLY:
                        continue
                    out = runs / base / mode / v
                    cell(
                        f"{base}/{mode}/{v}",
                        partial(defend, mdir, out, "tbar", mode == "known", args, **VARIANTS[v]),
                    )
            if args.ft_baseline:
                cell(f"{base}/ft", partial(defend, mdir, runs / base / "ft", "ft", False, args))
            if args.bibau:
                cell(
                    f"{base}/bibau",
                    partial(defend, mdir, runs / base / "bibau", "bibau", False, args, bf16=True),
                )
            for v in CURVE_VARIANTS if args.curve else ():
                if f"{base}/{v}" not in results["curves"]:
                    results["curves"][f"{base}/{v}"] = tradeoff_curve(mdir, args, **VARIANTS[v])
                    save(results, out_json)
        for n in [int(s) for s in args.sample_sizes.split(",") if s]:
            sub = argparse.Namespace(**{**vars(args), "clean_samples": n})
            for v in names(args.variants):
                out = runs / attack / f"n{n}" / v
                run_cell(
                    results,
                    f"{attack}/finetune/known/{v}/n{n}",
                    partial(defend, paths["finetune"], out, "tbar", True, sub, **VARIANTS[v]),
                    out_json=out_json,
                )
    if args.models_only:
        return
    results["provenance"] = provenance(args.seed)
    commands = results.setdefault("commands", [])  # each run resumes the rows of the last
    if results["provenance"]["command"] not in commands:
        commands.append(results["provenance"]["command"])
    results["variants"] = VARIANTS
    save(results, out_json)
    plot_curves(tag, results)
    write_markdown(tag, results)


def _undefended(model_dir: Path, args: argparse.Namespace) -> dict:
    m = evaluate_artifact(model_dir)
    row = {"clean_acc": m.clean_acc, "asr": m.asr, "robust_acc": m.robust_acc}
    if args.retune:
        row["retune_asr"] = retune_artifact(
            model_dir, config=RetuneConfig(seed=args.seed)
        ).after.asr
    return row


def plot_curves(tag: str, results: dict) -> None:
    curves = results.get("curves") or {}
    if not curves:
        return
    from unbackdoor.utils.figures import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, pts in sorted(curves.items()):
        style = "-" if "/finetune/" in name else "--"
        axes[0].plot(
            [100 * p["clean_acc"] for p in pts],
            [100 * p["asr"] for p in pts],
            style,
            marker="o",
            ms=3,
            label=name,
        )
        alphas = [p["alpha"] for p in pts]
        for metric, marker in (("asr", "s"), ("clean_acc", "o")):
            values = [100 * p[metric] for p in pts]
            axes[1].plot(alphas, values, style, marker=marker, ms=3, label=f"{name} {metric}")
    axes[0].set_xlabel("test CA (%)")
    axes[0].set_ylabel("test ASR (%)")
    axes[0].set_title("trade-off over alpha (known attack)", fontsize=9)
    axes[0].invert_xaxis()
    axes[1].set_xlabel("alpha")
    axes[1].set_ylabel("%")
    axes[1].set_title("CA and ASR against alpha", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, HERE / f"{tag}_curve.png")


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _row_order(key: str) -> tuple:
    """Table order: per attack the floor, then per regime none, known, unknown, ft, bibau."""
    parts = key.split("/")
    kinds = {"none": 0, "known": 1, "unknown": 2, "ft": 3, "bibau": 4}
    kind = kinds.get(parts[2], 5) if len(parts) > 2 else 0
    names = list(VARIANTS)
    variant = names.index(parts[3]) if len(parts) > 3 and parts[3] in names else len(names)
    size = int(parts[4][1:]) if len(parts) > 4 and parts[4][1:].isdigit() else 0  # nSIZE rows
    return (parts[0], parts[1] != "floor", parts[1], kind, variant, size, key)


def write_markdown(tag: str, results: dict) -> None:
    p = results["provenance"]
    header = [
        "model",
        "mode",
        "defense",
        "CA",
        "ASR",
        "retention",
        "alpha",
        "RA-ASR",
        "time",
        "notes",
    ]
    rows = []
    for key, r in sorted(results["rows"].items(), key=lambda kv: _row_order(kv[0])):
        parts = key.split("/")
        if "error" in r:
            rows.append([*parts[:2], "/".join(parts[2:]), *["-"] * 6, f"failed: {r['error'][:80]}"])
            continue
        if parts[1] == "floor":
            rows.append(
                [
                    parts[0],
                    "-",
                    "clean pretrained model (floor)",
                    pct(r["clean_acc"]),
                    pct(r["asr"]),
                    "-",
                    "-",
                    pct(r.get("retune_asr")),
                    "-",
                    "",
                ]
            )
            continue
        mode = parts[2] if parts[2] in ("known", "unknown") else "-"
        defense = "/".join(parts[3:] if mode != "-" else parts[2:])
        notes = ""
        if r.get("backdoor_found") is False:
            notes = "no backdoor reported"
        elif mode == "unknown":
            notes = f"target {r.get('suspected_target')}, anomaly {r.get('anomaly_score', 0):.1f}"
        rows.append(
            [
                f"{parts[0]}/{parts[1]}",
                mode,
                defense,
                pct(r["clean_acc"]),
                pct(r["asr"]),
                pct(r.get("retention")),
                "-" if r.get("alpha") is None else f"{r['alpha']:g}",
                pct(r.get("retune_asr")),
                f"{r['wall_time']:.0f} s" if "wall_time" in r else "-",
                notes,
            ]
        )
    curve_rows = []
    for name, pts in sorted((results.get("curves") or {}).items()):
        for pt in pts:
            curve_rows.append([name, f"{pt['alpha']:g}", pct(pt["clean_acc"]), pct(pt["asr"])])
    commands = ", ".join(f"`{c}`" for c in results.get("commands") or [p["command"]])
    text = f"""# TBAR on {tag}: fine-tuning regime against from-scratch regime

Produced by {commands} (each run keeps the rows already in `{tag}.json` and adds its own), last
on {p["date"]} ({p["cpu"]}, {p["hardware"]["cpu_count"]} cores, torch {p["versions"]["torch"]}).
Variants: {
        ", ".join(f"`{k}` {v}" for k, v in results["variants"].items())
    }. Retention: CA after / CA before. RA-ASR: ASR after the re-tuning
attack (`evaluate --retune` defaults). Raw numbers, the held-out alpha sweeps and the test-set
curves: `{tag}.json`; curves plotted in `{tag}_curve.png`.

{md_table(header, rows)}

## Test-set trade-off curves (known attack; vectors and recalibration as the defense has them)

{md_table(["model", "alpha", "CA", "ASR"], curve_rows)}
"""
    notes = HERE / f"{tag}.notes.md"  # the reading of the numbers, written by hand
    if notes.is_file():
        text += "\n" + notes.read_text(encoding="utf-8")
    atomic_write_text(HERE / f"{tag}.md", text)


if __name__ == "__main__":
    main()
