"""The smooth companion gate's verdict on each benchmark model (session 38; reads, tunes nothing).

    python benchmarks/cpu_bibau/gate_probe.py              # every targeted model of the zoo
    python benchmarks/cpu_bibau/gate_probe.py lf sig       # some attacks only
    N=500 python benchmarks/cpu_bibau/gate_probe.py lf     # the 500-image budget's draw

BI-BAU's ``companion_gate`` (``benchmarks/bibau_dev/README.md``, session 38) unlearns a smooth
companion only where the smooth family, inverted for every class, flags the target another
family found. Whether it opens depends on the model alone, so instead of rerunning every cell of
``benchmarks/configs/cpu_bibau.yaml`` this script asks the gate's question on each zoo model with
the data the cell's BI-BAU sees: the bench's draw of ``N`` training images (``seed + 7919``), the
80% BI-BAU keeps after holding out 20% (``split_defender_data``), and the gate's seed (``seed +
29``). Cells whose gate stays closed are unchanged by the companion (BI-BAU then only pays the
gate's inversion). Rows go to ``gate_probe.jsonl``; the planted target is read only to print it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "bibau_dev")]
from family_probe import probe_model  # noqa: E402

from unbackdoor.attacks.zoo import zoo_root  # noqa: E402
from unbackdoor.bench.cells import split_for  # noqa: E402
from unbackdoor.models import load_model  # noqa: E402
from unbackdoor.unlearn import split_defender_data  # noqa: E402

SEED = 0  # the grid's seed; BI-BAU's gate inverts with seed + 29


def zoo_models(wanted: list[str]) -> list[tuple[str, Path]]:
    """``(attack, folder)`` of the zoo's CIFAR-10 fast nets with an all-to-one attack."""
    found = []
    for path in sorted(zoo_root().iterdir()):
        meta = path / "attack.json"
        if not meta.is_file():
            continue
        record = json.loads(meta.read_text())
        zoo = json.loads((path / "zoo.json").read_text()) if (path / "zoo.json").is_file() else {}
        name = record["attack"]["name"]
        dataset = zoo.get("config", {}).get("dataset")
        if dataset != "cifar10" or record["policy"]["kind"] == "all_to_all":
            continue
        if not wanted or name in wanted:
            found.append((name, path))
    return found


def main(wanted: list[str]) -> None:
    n = int(os.environ.get("N", "2500"))
    for name, path in zoo_models(wanted):
        _, manifest = load_model(path)
        pool = split_for("cifar10", "train", manifest)
        data = split_defender_data(pool.sample(n, SEED + 7919), 0.2, SEED)[0]
        label = f"{name} ({path.name[:8]}, n={n})"
        probe_model(label, path, data, HERE / "gate_probe.jsonl", seed=SEED + 29, families="smooth")


if __name__ == "__main__":
    main(sys.argv[1:])
