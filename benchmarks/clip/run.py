"""CLIP benchmark (issue 7): the offline pretrained image-text model, backdoored and purified.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip/run.py --attack badnets
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip/run.py --attack blended
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip/run.py --attack badclip

The aligned offline model (``benchmarks/clip/align.py``, ``--model``) is backdoored by
contrastive fine-tuning on CIFAR-10 image-caption pairs, ``--rate`` of them stamped with the
trigger and captioned with the target class (``--target``, default 0, "airplane"); then each
defense purifies it with the same defender pairs, drawn from the CIFAR-10 training images the
attacker did not use: ``clip-tbar`` with the known trigger and with an inverted one, ``clip-bibau``
(blind) and ``cleanclip``. Reported per row: zero-shot clean accuracy on the CIFAR-10 test set
(``--test`` images, 0: all 10,000), ASR towards the target on the triggered non-target test
images, retention (CA after / CA of the backdoored model), the clean pairs the defense used
(training and held-out parts), its wall time, and whether the issue's targets are met (TBAR
known: ASR <= 1% at retention >= 98%; TBAR unknown and BI-BAU: ASR <= 5% at >= 96%).

Hyperparameters of the defenses are fixed here (``DEFENSES``); each defense picks what it picks
(TBAR's alpha) on the defender's held-out pairs, never on the test set. The frozen trunk's
features are memoised per (image, trigger) within one run, so one process does one attack; the
backdoored model is saved under ``--runs`` and reused by later runs with the same attack
settings, so the defenses can be run in separate processes (``--defenses``).
With ``--retune`` every model of the run (the aligned model: the floor; the backdoored one:
the ceiling; each purified one) also meets the re-tuning attack
(:func:`unbackdoor.clip.eval.retune.retune_clip`: ``--retune-samples`` pairs from CIFAR-10
training images that neither the alignment, the attacker nor the defender used, 1% of them
stamped and captioned with the target, 2 epochs of Adam at ``--retune-lr``), and the row
records the ASR after it (RA-ASR): a backdoor that was removed comes back no faster than in the
aligned model; one that was only hidden comes back at once. The classifier recipe's 5e-4 erodes
this model's backdoor instead (BadNets: 56% -> 16% after it); 5e-5 keeps the ceiling (49%) and
the floor (5.2%), chosen by the comparison in ``results.notes.md``.
Rows go to ``results.json`` beside this file (replacing earlier rows of the same attack and
defense) and ``results.md`` is rewritten from all rows, each with its command, date, machine,
seed and versions; ``--results STEM`` writes ``STEM.json`` / ``STEM.md`` instead (another
aligned model, e.g. ``results96`` for the 96 px one). A run without ``--retune`` keeps the
RA-ASR stored for the same aligned or backdoored model and names the run that measured it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import locked, md_table, provenance  # noqa: E402

from unbackdoor.attacks.registry import create_attack  # noqa: E402
from unbackdoor.attacks.store import AttackRecord, load_attack  # noqa: E402
from unbackdoor.clip.api import clip_train_config  # noqa: E402
from unbackdoor.clip.attacks.pipeline import backdoor_clip  # noqa: E402
from unbackdoor.clip.eval import zero_shot_metrics  # noqa: E402
from unbackdoor.clip.eval.retune import CLIP_RETUNE_LR, retune_clip  # noqa: E402
from unbackdoor.clip.model import ClipModel, is_clip_artifact, load_clip  # noqa: E402
from unbackdoor.clip.model.store import load_clip_manifest  # noqa: E402
from unbackdoor.clip.pretrained import SHARED_CACHE  # noqa: E402
from unbackdoor.data import ImageDataset, load_dataset  # noqa: E402
from unbackdoor.data.dataset import stratified_indices  # noqa: E402
from unbackdoor.errors import ConfigError  # noqa: E402
from unbackdoor.eval.retune import RetuneConfig  # noqa: E402
from unbackdoor.unlearn import unlearn  # noqa: E402
from unbackdoor.utils.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402

HERE = Path(__file__).resolve().parent
ALIGN = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip/align.py"
#: attack options. Patches are 8x8 (of 32x32): through the frozen ImageNet trunk (only its last
#: block trains) the 3x3 BadNets patch reached 11% ASR and a 4x4 checkerboard 12% (2,000 test
#: images, 5 epochs at lr 1e-3), 8x8 reached 56% (BadNets) and 79% (BadCLIP). BadCLIP's patch
#: optimisation runs through the whole image tower with gradients (no feature cache): 200 steps
#: of 64 images would take ~15 minutes on this CPU, hence 60 steps of 32.
ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "badnets": {"size": 8},
    "badclip": {"size": 8, "steps": 60, "batch_size": 32},
}

#: BI-BAU's budget here (its inversions run through the whole image tower)
BIBAU: dict[str, Any] = {
    "rounds": 3,
    "inversion_steps": 100,
    "inner_steps": 10,
    "outer_steps": 40,
    "inversion_batch_size": 8,
}

#: TBAR as these rows first ran (2026-11-22), before the repair step, the alpha rule for
#: inverted triggers and the additive fallback of the blind detection became its defaults
BEFORE_REPAIR: dict[str, Any] = {"repair_epochs": 0, "alpha_rule": "smallest"}
TBAR_KNOWN: dict[str, Any] = {"asr_threshold": 0.01, "ca_retention": 0.98, "plot": False}
#: Adam for the trigger fine-tune (steps that do not scale with the gradient), 10 epochs
ADAM: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "epochs": 10}
TBAR_UNKNOWN: dict[str, Any] = {
    "asr_threshold": 0.05,
    "ca_retention": 0.96,
    "inversion_steps": 60,
    "inversion_batch_size": 6,
    "plot": False,
}

#: BI-BAU with the collapse test, every class's mask inverted on the collapsed copy
COPY: dict[str, Any] = {
    **BIBAU,
    "family": "mask_pattern",
    "collapse_check": True,
    "collapse_invert": True,
}
COPY_LONG: dict[str, Any] = {**COPY, "collapse_inversion_steps": 400}

#: (row name, method, known attack, options, (ASR at most, retention at least) or None)
DEFENSES: dict[str, tuple[str, bool, dict[str, Any], tuple[float, float] | None]] = {
    "tbar-known": ("clip-tbar", True, {**TBAR_KNOWN, **BEFORE_REPAIR}, (0.01, 0.98)),
    # TBAR's projection off the target-class vector (the classifier TBAR's default)
    "tbar-known-target": (
        "clip-tbar",
        True,
        {**TBAR_KNOWN, **BEFORE_REPAIR, "clean_projection": "target"},
        (0.01, 0.98),
    ),
    "tbar-known-adam": ("clip-tbar", True, {**TBAR_KNOWN, **BEFORE_REPAIR, **ADAM}, (0.01, 0.98)),
    "tbar-unknown": (
        "clip-tbar",
        False,
        {**TBAR_UNKNOWN, **BEFORE_REPAIR, "family": "mask_pattern"},
        (0.05, 0.96),
    ),
    # today's defaults: each negated candidate repaired by clean fine-tuning before it is judged
    "tbar-known-repair": ("clip-tbar", True, TBAR_KNOWN, (0.01, 0.98)),
    "tbar-known-adam-repair": ("clip-tbar", True, {**TBAR_KNOWN, **ADAM}, (0.01, 0.98)),
    "tbar-unknown-repair": ("clip-tbar", False, TBAR_UNKNOWN, (0.05, 0.96)),
    "bibau": ("clip-bibau", False, {**BIBAU, "family": "mask_pattern"}, (0.05, 0.96)),
    # BI-BAU's default family: a bounded additive trigger when the mask finds nothing
    "bibau-auto": ("clip-bibau", False, {**BIBAU, "family": "auto"}, (0.05, 0.96)),
    # diagnostic, not blind: the target class given (the attack's target, 0), so the row shows
    # what the multimodal unlearning does once detection is out of the way
    "bibau-target": ("clip-bibau", False, {**BIBAU, "family": "auto", "target": 0}, None),
    # the weight-space fallback when the mask family names no class (the collapse test, with
    # the rule fixed on CIFAR-10 dev classifiers), and its trigger inverted on the collapsed
    # copy rather than on the model (``collapse_probe.py``)
    "bibau-collapse": (
        "clip-bibau",
        False,
        {**BIBAU, "family": "mask_pattern", "collapse_check": True},
        (0.05, 0.96),
    ),
    "bibau-collapse-copy": ("clip-bibau", False, COPY, (0.05, 0.96)),
    # the same with 400 steps for the inversion on the copy: at 100 its masks were still
    # 148-220 px (the probe's, at 400 steps of 16 images, 6.4 px; collapse_probe.json)
    "bibau-collapse-copy-long": ("clip-bibau", False, COPY_LONG, (0.05, 0.96)),
    # the copy's place with the pattern re-fitted on the model (grown by a pixel, 200 steps of
    # 16 images; 58.9% fooling in ``collapse_probe.py --refit``), re-fitted again each round
    "bibau-collapse-refit": (
        "clip-bibau",
        False,
        {**COPY_LONG, "collapse_refit_steps": 200},
        (0.05, 0.96),
    ),
    # the same place grown by two pixels: on BadNets the one-pixel place (32 px) covered part
    # of the 64 px patch and the rest kept a quarter of the ASR
    "bibau-collapse-refit-grow2": (
        "clip-bibau",
        False,
        {**COPY_LONG, "collapse_refit_steps": 200, "collapse_refit_grow": 2},
        (0.05, 0.96),
    ),
    # the one-pixel place, widened by a pixel whenever the pattern re-fitted there no longer
    # fools (at most 3 times; rule fixed before the run), with 5 rounds so that a widened place
    # can be unlearned: the stop test then also looks around the place it was given
    "bibau-collapse-refit-widen": (
        "clip-bibau",
        False,
        {**COPY_LONG, "rounds": 5, "collapse_refit_steps": 200, "collapse_refit_widen": 3},
        (0.05, 0.96),
    ),
    # the same with 8 rounds (BI-BAU's default): the 5-round row ended on its round limit at
    # 6.73%, the stop test never passed; chosen after seeing that row, reported as such
    "bibau-collapse-refit-widen8": (
        "clip-bibau",
        False,
        {**COPY_LONG, "rounds": 8, "collapse_refit_steps": 200, "collapse_refit_widen": 3},
        (0.05, 0.96),
    ),
    "cleanclip": ("cleanclip", False, {"epochs": 5, "lr": 1e-4}, None),
}


#: the defense diagnostics a row keeps (TBAR's alpha choice, BI-BAU's detection: which family
#: flagged what, each class's first trigger size and fooling rate, and why it stopped)
DIAGNOSTICS = (
    "alpha",
    "alpha_rule",
    "alpha_sweep",
    "trigger_source",
    "rounds",
    "result",
    "families_tried",
    "family_verdicts",
    "found_by",
    "collapse",
    "first_inversion",
    "refit",
    "reinverted_fooling_per_round",
    "fooling_per_round",
    "stopped",
)

#: the rows every run measures before its defenses: the floor and the ceiling
REFERENCE_ROWS = ("clean (aligned)", "backdoored")


def probe_parts(seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """The defender's pairs of the benchmark's default run, split as ``unlearn()`` splits them
    (80% to work on, 20% held out): what the probes next to this script look at."""
    _, defender, _ = split_train(5000, 1000, seed, 15000, 0)
    held, work = defender.split(0.2, seed)
    return work, held


def planted_square(attack: dict[str, Any]) -> torch.Tensor:
    """32 x 32 map of a BadNets/BadCLIP patch's place (bottom right, margin 1, the catalogue's
    default), read from an artifact's ``attack.json``: for the probes' diagnostic columns only."""
    size = int(attack.get("attack", {}).get("size", 8))
    square = torch.zeros(32, 32)
    square[-size - 1 : -1, -size - 1 : -1] = 1
    return square


def split_train(
    attack_pairs: int,
    defender: int,
    seed: int,
    align_cifar: int,
    align_seed: int,
    retune: int = 0,
) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """Disjoint samples of CIFAR-10 train: the attacker's images, the defender's and the
    re-tuning attack's pool (``retune`` images; the first two do not depend on it).

    Both leave out the ``align_cifar`` images the offline model was aligned on (``align.py``
    takes ``load_dataset("cifar10", "train").sample(align_cifar, align_seed)``), so the
    defender's held-out pairs measure accuracy on images the model has not seen.
    """
    train = load_dataset("cifar10", "train")
    seen = torch.zeros(len(train), dtype=torch.bool)
    if align_cifar:
        n = len(train)
        seen[stratified_indices(train.labels, align_cifar / n, align_seed, total=align_cifar)] = 1
    pool = torch.nonzero(~seen).flatten()
    used = attack_pairs + defender
    if used + retune > len(pool):
        raise ConfigError(
            f"{attack_pairs} + {defender} + {retune} images asked of {len(pool)} unseen ones"
        )
    perm = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    return (
        train.subset(perm[:attack_pairs], "cifar10-attacker"),
        train.subset(perm[attack_pairs:used], "cifar10-defender"),
        train.subset(perm[used : used + retune], "cifar10-retune"),
    )


def measure(
    model: ClipModel,
    test: ImageDataset,
    record: AttackRecord,
    retune_pool: ImageDataset | None = None,
    retune: RetuneConfig | None = None,
) -> dict[str, Any]:
    """Zero-shot CA and ASR on the test images; with a pool, the ASR after the re-tuning attack."""
    target = int(record.policy.target)
    m = zero_shot_metrics(model, test, trigger=record.trigger, target=target)
    out: dict[str, Any] = {"ca": m.clean_acc, "asr": float(m.asr or 0.0)}
    if retune_pool is not None and len(retune_pool):
        r = retune_clip(model, retune_pool, test, record, retune)
        out["ra_asr"] = float(r.after.asr or 0.0)
        out["ra_ca"] = r.after.clean_acc
        out["retune"] = r.config
    return out


def row_md(r: dict[str, Any]) -> list[Any]:
    """One Markdown row of ``results.md``."""
    met = r.get("target_met")
    return [
        r["attack"],
        r["defense"],
        f"{100 * r['ca']:.2f}%",
        f"{100 * r['asr']:.2f}%",
        "-" if r.get("retention") is None else f"{100 * r['retention']:.1f}%",
        "-" if r.get("ra_asr") is None else f"{100 * r['ra_asr']:.2f}%",
        r.get("clean_pairs") or "-",
        "-" if r.get("wall_s") is None else f"{r['wall_s']:.0f} s",
        "-" if met is None else ("yes" if met else "no"),
    ]


def write_md(rows: list[dict[str, Any]], stem: Path) -> None:
    """``STEM.md`` from every stored row (and ``STEM.notes.md`` appended where it exists)."""
    header = ["attack", "defense", "zero-shot CA", "ASR", "retention", "RA-ASR"]
    header += ["clean pairs", "wall", "target met"]
    runs: dict[str, dict[str, Any]] = {}  # one line per process: its command and rows
    for r in rows:
        p = r["provenance"]
        runs.setdefault(p["command"] + p["date"], {**p, "rows": []})["rows"].append(r["defense"])
        if q := r.get("retune_provenance"):  # its RA-ASR came from an earlier --retune run
            entry = runs.setdefault(q["command"] + q["date"], {**q, "rows": []})
            entry["rows"].append(f"{r['defense']} (RA-ASR)")
    aligned = sorted(
        {
            f"`{c['model']}` ({c['model_config'].get('image_size')} px input)"
            for r in rows
            if (c := r.get("config") or {}).get("model_config")
        }
    )
    lines = [
        "# CLIP benchmark (issue 7)",
        "",
        "The offline pretrained image-text model (EfficientNet-Lite0 + MiniLM-L6, aligned by",
        "`benchmarks/clip/align.py`), backdoored by contrastive fine-tuning on poisoned CIFAR-10",
        "pairs, then purified. Targets (issue 7): TBAR known attack ASR <= 1% at retention >= 98%;",
        "TBAR unknown attack and BI-BAU ASR <= 5% at retention >= 96%. Retention: zero-shot CA",
        "after / CA of the backdoored model. RA-ASR: the ASR after the re-tuning attack",
        "(`--retune`; the aligned model's row is the floor, the backdoored one's the ceiling; '-':",
        "not measured). Clean pairs: what the defense was given (training and held-out parts",
        "together). Produced by `benchmarks/clip/run.py`; raw rows with their configurations in",
        f"`{stem.name}.json`. Aligned model: {', '.join(aligned) or 'not recorded'}.",
        "",
        md_table(header, [row_md(r) for r in rows]),
        "",
        "## Runs",
        "",
    ]
    for p in runs.values():
        lines.append(
            f"- {', '.join(p['rows'])}: `{p['command']}` on {p['date']} ({p['cpu']}, "
            f"{p['hardware']['cpu_count']} cores shared with other jobs, "
            f"{p['hardware']['torch_threads']} torch thread), seed {p['seed']}, "
            f"torch {p['versions']['torch']}, unbackdoor {p['versions']['unbackdoor']}"
        )
    notes = stem.with_name(stem.name + ".notes.md")
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    atomic_write_text(stem.with_name(stem.name + ".md"), "\n".join(lines) + "\n")


def store(rows: list[dict[str, Any]], stem: Path = HERE / "results") -> None:
    """Replace the stored rows of the same (attack, defense) in ``STEM.json``, then rewrite it
    and ``STEM.md``.

    Runs of different attacks may go on in parallel: the update holds a file lock.
    """
    path = stem.with_name(stem.name + ".json")
    with locked(path):
        _store(rows, path, stem)


#: RA-ASR fields that a run without ``--retune`` does not measure
RETUNE_FIELDS = ("ra_asr", "ra_ca", "retune")


def _keep_retune(row: dict[str, Any], old: list[dict[str, Any]]) -> dict[str, Any]:
    """A reference row (aligned or backdoored model) measured without ``--retune`` keeps the
    RA-ASR an earlier run stored for the same model: same attack, CA and ASR to the last digit."""
    if row["defense"] not in REFERENCE_ROWS or "ra_asr" in row:
        return row
    for o in old:
        same = (o["attack"], o["defense"], o["ca"], o["asr"])
        if same == (row["attack"], row["defense"], row["ca"], row["asr"]) and "ra_asr" in o:
            kept = {k: o[k] for k in RETUNE_FIELDS if k in o}
            return {**row, **kept, "retune_provenance": o.get("retune_provenance", o["provenance"])}
    return row


def _store(rows: list[dict[str, Any]], path: Path, stem: Path) -> None:
    old = read_json(path) if path.is_file() else []
    rows = [_keep_retune(r, old) for r in rows]
    keys = {(r["attack"], r["defense"]) for r in rows}
    merged = [r for r in old if (r["attack"], r["defense"]) not in keys] + rows
    order = {"badnets": 0, "blended": 1, "badclip": 2}
    names = [*REFERENCE_ROWS, *DEFENSES]

    def rank(r: dict[str, Any]) -> tuple[int, int]:
        d = r["defense"]
        return order.get(r["attack"], 9), names.index(d) if d in names else len(names)

    merged.sort(key=rank)
    atomic_write_json(path, merged)
    write_md(merged, stem)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attack", required=True, choices=["badnets", "blended", "badclip"])
    ap.add_argument("--model", default="runs/clip/offline_tb1", help="the aligned model")
    ap.add_argument("--defenses", default=",".join(DEFENSES), help="comma-separated row names")
    ap.add_argument("--attack-pairs", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--attack-epochs", type=int, default=5)
    ap.add_argument("--attack-lr", type=float, default=1e-3)
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--defender", type=int, default=1000, help="the defender's clean pairs")
    ap.add_argument("--test", type=int, default=0, help="test images, 0: all 10,000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--align-cifar", type=int, default=15000, help="align.py's --cifar")
    ap.add_argument("--align-seed", type=int, default=0, help="align.py's --seed")
    ap.add_argument("--runs", default="runs/clip/bench", help="where backdoored models go")
    ap.add_argument(
        "--attack-option", action="append", default=[], help="KEY=VALUE (JSON) for the trigger"
    )
    ap.add_argument("--no-store", action="store_true", help="print the rows, store nothing")
    ap.add_argument(
        "--results",
        default=str(HERE / "results"),
        help="where rows go: STEM.json and STEM.md (another aligned model gets its own stem)",
    )
    ap.add_argument(
        "--retune", action="store_true", help="also the ASR after the re-tuning attack (RA-ASR)"
    )
    ap.add_argument("--retune-samples", type=int, default=1000, help="the re-tuning attack's pairs")
    ap.add_argument("--retune-rate", type=float, default=0.01, help="its share of poisoned pairs")
    ap.add_argument(
        "--retune-lr", type=float, default=CLIP_RETUNE_LR, help="its Adam learning rate"
    )
    ap.add_argument("--retune-epochs", type=int, default=2, help="its epochs")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    chosen = [d for d in a.defenses.split(",") if d]
    unknown = [d for d in chosen if d not in DEFENSES]
    if unknown:
        raise ConfigError(f"unknown defenses {unknown}; known: {list(DEFENSES)}")
    if not (Path(a.model) / "clip.json").is_file():
        raise ConfigError(f"{a.model}: no aligned model; make one first: {ALIGN} --out {a.model}")
    prov = provenance(a.seed)
    options = dict(ATTACK_OPTIONS.get(a.attack, {}))
    for item in a.attack_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--attack-option: expected KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    model, man = load_clip(a.model)
    attacker, defender, retune_pool = split_train(
        a.attack_pairs,
        a.defender,
        a.seed,
        a.align_cifar,
        a.align_seed,
        a.retune_samples if a.retune else 0,
    )
    recipe = RetuneConfig(
        samples=a.retune_samples, poison_rate=a.retune_rate, lr=a.retune_lr, epochs=a.retune_epochs
    )
    test = load_dataset("cifar10", "test")
    if 0 < a.test < len(test):
        test = test.sample(a.test, a.seed)
    base = {"attack": a.attack, "provenance": prov, "test_images": len(test)}
    attack_cfg = {
        "pairs": a.attack_pairs,
        "rate": a.rate,
        "epochs": a.attack_epochs,
        "lr": a.attack_lr,
        "target": a.target,
        "model": a.model,
        "model_config": man.config,
        "seed": a.seed,
        "align_cifar": a.align_cifar,
        "attack_options": options,
    }
    saved = Path(a.runs) / a.attack
    if is_clip_artifact(saved) and load_clip_manifest(saved).extra.get("bench") == attack_cfg:
        backdoored, _ = load_clip(saved)  # the same attack made by an earlier run
        record = load_attack(saved)
        attack_s = float(read_json(saved / "bench.json")["attack_s"])
    else:
        t0 = time.perf_counter()
        made = backdoor_clip(
            model,
            attacker,
            create_attack(a.attack, seed=a.seed, **options),
            target=a.target,
            rate=a.rate,
            config=clip_train_config(a.attack_epochs, a.attack_lr, a.seed, "cpu"),
            seed=a.seed,
            out=saved,
            extra={"bench": attack_cfg, "dataset": "cifar10"},
        )
        attack_s = time.perf_counter() - t0
        backdoored, record = made.model, made.record
        atomic_write_json(saved / "bench.json", {"attack_s": attack_s})
    features = saved / "features.safetensors"  # the trunk's features of this attack's images
    if features.is_file():
        SHARED_CACHE.load(features)
    rows = [
        {
            **base,
            "defense": "clean (aligned)",
            **measure(load_clip(a.model)[0], test, record, retune_pool, recipe),
        }
    ]
    before = measure(backdoored, test, record, retune_pool, recipe)
    rows.append(
        {
            **base,
            "defense": "backdoored",
            **before,
            "wall_s": attack_s,
            "clean_pairs": None,
            "config": attack_cfg,
        }
    )
    print(rows[-2:], flush=True)
    if not features.is_file():
        SHARED_CACHE.save(features)
    for name in chosen:
        method, known, options, goal = DEFENSES[name]
        purified, report = unlearn(
            backdoored,
            defender,
            method,
            seed=a.seed,
            known_attack=record if known else None,
            device="cpu",
            **options,
        )
        after = measure(purified, test, record, retune_pool, recipe)
        retention = after["ca"] / before["ca"]
        row = {
            **base,
            "defense": name,
            **after,
            "retention": retention,
            "clean_pairs": report.clean_samples_used,
            "clean_pairs_train": report.clean_samples_used - report.val_samples,
            "clean_pairs_val": report.val_samples,
            "wall_s": report.wall_time,
            "method": method,
            "known_attack": known,
            "config": report.config,
            "suspected_target": report.suspected_target,
            "backdoor_found": report.backdoor_found,
            "anomaly_score": report.anomaly_score,
            "target_met": None
            if goal is None
            else bool(after["asr"] <= goal[0] and retention >= goal[1]),
            "diagnostics": {k: v for k, v in report.diagnostics.items() if k in DIAGNOSTICS},
        }
        rows.append(row)
        shown = ("defense", "ca", "asr", "retention", "ra_asr", "wall_s")
        print({k: row.get(k) for k in shown}, flush=True)
        if not a.no_store:
            store(rows, Path(a.results))
    if not a.no_store:
        store(rows, Path(a.results))


if __name__ == "__main__":
    main()
