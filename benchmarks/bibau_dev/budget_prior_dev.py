"""The budget_prior switch rule on the CIFAR-10 dev models (session 24; rule in README, session 23).

    OMP_NUM_THREADS=1 python benchmarks/bibau_dev/budget_prior_dev.py dev_clean dev_blended

For each dev model (``dev_model.py``; never a benchmark model), BI-BAU's blind detection exactly
as the cpu grid runs it (``BIBAU(bf16=True)``'s settings through
:func:`~unbackdoor.inversion.detect.detect_with`: mask, then additive with the budget search,
then warp, stopping at the first family that flags a class) on the defender images ``tune.py``
draws (2,500 of the dev model's own training split, ``sample(2500, 7919)``, of which BI-BAU
inverts on the 80% it keeps after holding out 20%), once with ``budget_prior=True`` (the
default) and once with ``False``. The rule, written before this script ran: ``False`` becomes
the default if with it the dev clean model's verdict stays "no backdoor" and the dev Blended
(and BadNets) targets are found as now, by the family that finds them today or an earlier one.
``--priors false --after-mask`` runs only the budgeted families (additive, then warp) with
``budget_prior=False``, for a model whose mask verdict the ``True`` row already gave: the mask
family has no budget, so the option cannot change it (``invert``: the prior's weight is only
zeroed for a budgeted family), and its ten-class inversion need not be repeated. The planted
trigger is never read. Rows (per family tried: its verdict; the deciding family;
the budgets tried) are appended to ``budget_prior_dev.jsonl`` beside this file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import emit_row, provenance  # noqa: E402

from unbackdoor.data import load_dataset  # noqa: E402
from unbackdoor.defenses.bibau import BIBAU  # noqa: E402
from unbackdoor.inversion import invert  # noqa: E402
from unbackdoor.inversion.detect import detect_with  # noqa: E402
from unbackdoor.models import load_model  # noqa: E402
from unbackdoor.unlearn import split_defender_data  # noqa: E402

HERE = Path(__file__).resolve().parent
from dev_model import RUNS  # noqa: E402  (this folder is on sys.path)


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    priors, families = (True, False), None
    if "--priors" in args:
        i = args.index("--priors")
        priors = tuple(p == "true" for p in args[i + 1].split(","))
        args = args[:i] + args[i + 2 :]
    if "--after-mask" in args:
        args.remove("--after-mask")
        families = ("additive", "warp")
    names = args
    split = torch.load(RUNS / "dev_split.pt", weights_only=True)
    train = load_dataset("cifar10", "train").subset(split["train_idx"], "cifar10")
    data = split_defender_data(train.sample(2500, 7919), 0.2, 0)[0]
    for name in names:
        model, _ = load_model(RUNS / name)
        model.eval()
        for prior in priors:
            settings = BIBAU(bf16=True, budget_prior=prior)
            t0 = time.perf_counter()
            det = detect_with(
                settings,
                model,
                data,
                families=families,
                auto_eps=settings.auto_eps,
                invert_fn=invert,
                seed=0,
                desc=f"{name} budget_prior={prior}",
            )
            row = {
                "model": name,
                "budget_prior": prior,
                "families_asked": list(families) if families else "all",
                "images": len(data),
                "family": det.family,
                "found": det.found,
                "verdict": det.verdict.as_dict() if det.verdict else None,
                "verdicts": det.verdicts,
                "budgets": det.eps_trail,
                "seconds": round(time.perf_counter() - t0, 1),
                "provenance": provenance(0),
            }
            emit_row(row, HERE / "budget_prior_dev.jsonl")


if __name__ == "__main__":
    main(sys.argv[1:])
