"""Does the weight-space detector name the targets the input-space one misses on CLIP? A probe.

BI-BAU's blind inversion does not find the BadNets and BadCLIP targets of the 96 px offline
CLIP models (``results96.md``): natural 8x8 patches reach every class about as cheaply as the
real one on an ImageNet-pretrained tower (``inversion_probe.json``). The classifier's fallback,
:func:`unbackdoor.inversion.collapse.collapse` (unlearn the clean task by gradient ascent on a
copy, see which class the forgotten images go to), never looks at trigger sizes. This runs it on
the zero-shot classifier of each model (class prompts; text tower and temperature frozen, as in
``clip-bibau``), on the defender's 800 working pairs with its 200 held-out ones, and applies the
rule fixed on the CIFAR-10 dev classifiers (``collapse_share`` 0.3, ``collapse_ratio`` 2,
``collapse_breadth`` 0.6; ``benchmarks/bibau_dev/README.md``), unchanged: nothing here is chosen
from these models. The never-backdoored row is the aligned model the attacks started from.

``--invert STEPS`` then asks whether the collapsed copy helps the *inversion* too: a network that
has forgotten its clean features should no longer be reached by the natural patches that
exploit them, while the backdoor still works. The mask family is inverted for the flagged class
(``STEPS`` steps of 16 images per class) on the model and on the last repeat's collapsed copy;
how much of each mask lies on the planted patch (an 8x8 square, bottom right, margin 1, for
BadNets and BadCLIP) is recorded as a diagnostic read afterwards, never used to choose anything.
``--refit N`` keeps the copy's mask (as found, and grown by one pixel) and re-optimises only the
pattern against the model for ``N`` steps: does the place found on the copy give a trigger that
flips the model itself? Each trigger's fooling rate on the model is measured on the held-out
pairs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip/collapse_probe.py \\
        runs/clip/offline_tb1_96 runs/clip/bench96/badnets runs/clip/bench96/blended \\
        runs/clip/bench96/badclip
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import planted_square, probe_parts  # noqa: E402

from unbackdoor.clip.defenses.common import FrozenText, as_pairs, head  # noqa: E402
from unbackdoor.clip.model.store import load_clip  # noqa: E402
from unbackdoor.defenses.bibau import BIBAU  # noqa: E402
from unbackdoor.inversion.collapse import collapse  # noqa: E402
from unbackdoor.inversion.invert import InversionConfig, fooling_rate, invert  # noqa: E402
from unbackdoor.inversion.refit import refit_pattern  # noqa: E402
from unbackdoor.utils.io import atomic_write_json  # noqa: E402
from unbackdoor.utils.runinfo import run_info  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="CLIP artifact folders")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "collapse_probe.json"))
    ap.add_argument("--invert", type=int, default=0, help="inversion steps (0: no inversion)")
    ap.add_argument(
        "--refit", type=int, default=0, help="with --invert: pattern steps on the model (0: none)"
    )
    a = ap.parse_args()
    rule = BIBAU()
    train, val = probe_parts(0)
    out = Path(a.out)
    stored = json.loads(out.read_text()) if out.exists() else {}
    rows, commands = stored.get("rows", []), stored.get("commands", [])
    commands.append(" ".join(["benchmarks/clip/collapse_probe.py", *sys.argv[1:]]))
    done = {(r["model"], bool(r.get("inversions"))) for r in rows}
    for path in a.models:
        if (path, bool(a.invert)) in done:  # resumable: a finished model is kept, not rerun
            continue
        torch.manual_seed(a.seed)
        clip, _ = load_clip(path)
        attack_file = Path(path) / "attack.json"
        attack = json.loads(attack_file.read_text()) if attack_file.exists() else None
        pairs = as_pairs(train, a.seed)
        zs = head(clip, pairs, None)
        t0 = time.perf_counter()
        with FrozenText(clip):
            res = collapse(zs, pairs, val, seed=a.seed, keep_model=bool(a.invert))
        call = res.verdict(rule.collapse_share, rule.collapse_ratio, rule.collapse_breadth)
        inversions = []
        if a.invert and res.model is not None:
            patch = planted_square(attack or {})  # for the diagnostic column only
            cfg = InversionConfig(steps=a.invert, batch_size=16)
            for which, net in (("model", zs), ("collapsed copy", res.model)):
                inv = invert(net, pairs, cfg, classes=[call["class"]], desc=f"invert on {which}")
                mask = inv.family.mask.detach().reshape(32, 32)
                found_on = inv.family
                inversions.append(
                    {
                        "on": which,
                        "class": call["class"],
                        "size": round(float(inv.sizes[0]), 2),
                        "fooling": round(float(inv.fooling[0]), 4),
                        "mask_on_planted_patch": round(
                            float((mask * patch).sum() / mask.sum().clamp_min(1e-9)), 4
                        ),
                    }
                )
                print(inversions[-1], flush=True)
            for grow in (0, 1) if a.refit else ():
                fam = refit_pattern(
                    zs, pairs, found_on, call["class"], a.refit, grow=grow, seed=a.seed
                )
                mask = fam.mask.detach().reshape(32, 32)
                inversions.append(
                    {
                        "on": f"copy's mask{' grown 1 px' if grow else ''}, pattern refit on model",
                        "class": call["class"],
                        "size": round(float(fam.size()[0]), 2),
                        "fooling": round(float(fooling_rate(zs, fam, val, [call["class"]])[0]), 4),
                        "mask_on_planted_patch": round(
                            float((mask * patch).sum() / mask.sum().clamp_min(1e-9)), 4
                        ),
                    }
                )
                print(inversions[-1], flush=True)
        row = {
            "model": path,
            "attack": None if attack is None else attack["attack"]["name"],
            "target": None if attack is None else attack["policy"].get("target"),
            **call,
            **res.as_dict(),
            "inversions": inversions,
            "seconds": round(time.perf_counter() - t0, 1),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("errors", "per_repeat")}, flush=True)
        atomic_write_json(
            out,
            {
                "commands": commands,  # every invocation that added rows, in order
                "rule": {
                    "share": rule.collapse_share,
                    "ratio": rule.collapse_ratio,
                    "breadth": rule.collapse_breadth,
                },
                **run_info(a.seed),
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
