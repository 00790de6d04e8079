"""Where does BI-BAU's round lose accuracy with few defender images? (session 28 probe)

    python benchmarks/bibau_dev/round_cost_probe.py '{"lr": 1e-7}'
    python benchmarks/bibau_dev/round_cost_probe.py '{"shared_eps": null}'

One BI-BAU round (held-out guard off) on the quick grid's MNIST Blended zoo model (session 28 ran
it with ``UNBACKDOOR_ZOO=/tmp/zoo_cold_s28b``, the cold zoo of its quick-grid run) with 500
training images (draw 0), with the given option overrides; prints the clean accuracy before
and after on 2,000 MNIST test images. A diagnosis only: it chose no default (the test images
are the quick grid's own), see ``README.md`` in this folder, session 28.
"""

from __future__ import annotations

import json
import sys

import unbackdoor
from unbackdoor.bench.cells import zoo_model


def main() -> None:
    opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    path, _ = zoo_model("mnist", "small_cnn", "blended")
    model, _ = unbackdoor.load_model(path)
    data = unbackdoor.load_dataset("mnist", "train").sample(500, 0)
    test = unbackdoor.load_dataset("mnist", "test").sample(2000, 0)
    opts = {"rounds": 1, "max_val_drop": None, **opts}
    purified, rep = unbackdoor.unlearn(model, data, "bibau", seed=0, **opts)
    d = rep.diagnostics
    before, after = (unbackdoor.evaluate(m, test).clean_acc for m in (model, purified))
    print(
        json.dumps(
            {
                "opts": opts,
                "ca_before": before,
                "ca_after": after,
                "family": d.get("family"),
                "val": d.get("val_clean_acc_per_round"),
            }
        )
    )


if __name__ == "__main__":
    main()
