"""Why the label-consistent CIFAR-10 models do not learn their trigger (issue 3).

    python benchmarks/attacks/lc_diagnose.py

For each crafting model: clean accuracy and accuracy under a 10-step PGD at its training radius
(1,000 test images): a robust model keeps some, a standard or catastrophically overfitted one
none. For each label-consistent victim: how it classifies its own poisoned class-0 training
images with and without the trigger, and its class-0 test accuracy. The zoo entries are the ones
of `cifar10.md` (the standard-twin victim and the 8/255 crafting model were moved out of the zoo
to `~/.cache/unbackdoor/zoo_retired`). Writes `lc_diagnose.json` beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import provenance  # noqa: E402

from unbackdoor.api import load_test_data  # noqa: E402
from unbackdoor.attacks.store import load_attack  # noqa: E402
from unbackdoor.models import load_model  # noqa: E402
from unbackdoor.utils.io import atomic_write_json  # noqa: E402

HOME = Path.home() / ".cache" / "unbackdoor"
CRAFTING = {  # name -> (directory, PGD radius on the 0-255 scale)
    "standard (e5ca67e3cc31eec5)": (HOME / "zoo/e5ca67e3cc31eec5", 8),
    "FGSM-RS 8/255": (HOME / "zoo_retired/9aadca589cf01229_robust_eps8_collapsed", 8),
    "FGSM-RS 4/255": (HOME / "zoo/39de2fd74aedccf4", 4),
    "PGD-3 8/255": (HOME / "zoo/756ec8e6598e12f5", 8),
}
VICTIMS = {
    "crafted on the standard model": HOME / "zoo_retired/f1a8092819f3acdb",
    "crafted on FGSM-RS 4/255": HOME / "zoo/243998afef0f4766",
    "crafted on PGD-3 8/255": HOME / "zoo/efc8990fcf644e33",
    "crafted on PGD-3 8/255, rate 0.05": HOME / "zoo/64c90cd227654c9b",
}


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def pgd(model, x, y, eps: float, steps: int = 10) -> torch.Tensor:
    x0, x = x, x.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        x = (x0 + (x.detach() + 2.5 * eps / steps * g.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
    return x.detach()


def main() -> None:
    torch.set_num_threads(1)
    out = {"crafting": {}, "victims": {}}
    for name, (path, radius) in CRAFTING.items():
        if not path.is_dir():
            continue
        m, manifest = load_model(path)
        m.eval()
        te = load_test_data(manifest, None, "test").sample(1000, 0)
        x, y = te.float_images(), te.labels
        full = load_test_data(manifest, None, "test")
        cls0 = full.labels == 0
        out["crafting"][name] = {
            "clean_acc": accuracy(m, x, y),
            "class0_test_acc": accuracy(m, full.float_images()[cls0], full.labels[cls0]),
            "pgd_radius_255": radius,
            "pgd_acc": accuracy(m, pgd(m, x, y, radius / 255), y),
        }
    for name, path in VICTIMS.items():
        if not path.is_dir():
            continue
        m, manifest = load_model(path)
        m.eval()
        rec = load_attack(path)
        train = load_test_data(manifest, None, "train")
        idx = torch.tensor(rec.poison_indices[:1000])
        x, y = train.images[idx].float() / 255, train.labels[idx]
        zero = torch.zeros_like(y)
        perturbed = (x + rec.attack.perturbation(idx)).clamp(0, 1)
        te = load_test_data(manifest, None, "test")
        cls0 = te.labels == 0
        out["victims"][name] = {
            "poisoned_as_target": accuracy(m, rec.attack.poison_images(x, idx, y), zero),
            "perturbed_without_trigger_as_target": accuracy(m, perturbed, zero),
            "class0_test_acc": accuracy(m, te.float_images()[cls0], te.labels[cls0]),
        }
    out["provenance"] = provenance(0)
    atomic_write_json(Path(__file__).resolve().parent / "lc_diagnose.json", out)
    print(out["crafting"], out["victims"])


if __name__ == "__main__":
    main()
