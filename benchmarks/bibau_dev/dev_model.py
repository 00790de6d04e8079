"""The development model on which BI-BAU's CIFAR-10 defaults were chosen (never the test set).

    python benchmarks/bibau_dev/dev_model.py                    # the BadNets dev model
    python benchmarks/bibau_dev/dev_model.py --clean            # its never-backdoored twin
    python benchmarks/bibau_dev/dev_model.py --attack blended   # dev_blended
    python benchmarks/bibau_dev/dev_model.py --dataset mnist --attack badnets  # dev_mnist_badnets
    python benchmarks/bibau_dev/dev_model.py --dataset mnist --seed 2  # dev_mnist_badnets_s2

A BadNets fast net (10% poisoning, target 0, seed 1) trained on 45,000 of the 50,000 CIFAR-10
training images; the other 5,000 (a stratified, seeded split) are its "dev" set, on which
``tune.py`` scores clean accuracy and ASR. Writes ``dev_split.pt`` and ``dev_badnets`` under
``RUNS`` (``dev_clean`` with ``--clean``: the same recipe, data and seed without poisoning, on
which the detection threshold is calibrated, see ``calibrate.py``). ``--attack NAME`` trains the
same recipe with another attack of the catalogue into ``dev_NAME``; with seed 1, its generated
trigger (e.g. Blended's pattern) differs from the test zoo's seed-0 one. ``RUNS`` is
``~/.cache/unbackdoor/bibau_dev`` (beside the zoo; ``UNBACKDOOR_DEV_RUNS`` overrides): until
2026-12-03 it was ``benchmarks/bibau_dev/runs``, inside the checkout, which every fresh
checkout lost with an hour of training per model. ``--dataset mnist`` does the same for MNIST's
small CNN (54,000 training images, 6,000 dev; ``dev_split_mnist.pt``, ``dev_mnist_NAME``), a
minute per model. ``--seed S`` (default 1) trains another twin of the same recipe, named with a
``_sS`` suffix (seed 1 keeps the plain name); ``--epochs N`` trains N epochs instead of the
recipe's (suffix ``_eN``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from unbackdoor.api import train_model
from unbackdoor.attacks.pipeline import attack_model
from unbackdoor.attacks.zoo import zoo_root
from unbackdoor.data import load_dataset
from unbackdoor.data.dataset import stratified_indices

#: where the dev models live: beside the zoo (``UNBACKDOOR_CACHE``, default ~/.cache/unbackdoor),
#: so that a machine that keeps its zoo keeps them too; ``UNBACKDOOR_DEV_RUNS`` overrides
RUNS = Path(os.environ.get("UNBACKDOOR_DEV_RUNS") or zoo_root().parent / "bibau_dev")


#: per data set: the victim model, the training images it keeps, the prefix of its dev models
DATASETS = {"cifar10": ("fastnet", 45_000, "dev_"), "mnist": ("small_cnn", 54_000, "dev_mnist_")}


def split_path(dataset: str = "cifar10") -> Path:
    """Where the dev split of ``dataset`` is stored."""
    return RUNS / ("dev_split.pt" if dataset == "cifar10" else f"dev_split_{dataset}.pt")


def dev_split(dataset: str = "cifar10") -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, dev indices) of ``dataset``'s training split."""
    train = load_dataset(dataset, "train")
    idx = stratified_indices(train.labels, 0.9, 1234, total=DATASETS[dataset][1])
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[idx] = False
    return idx, torch.nonzero(keep).flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a BI-BAU development model.")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    parser.add_argument("--attack", default="badnets", help="an attack of the catalogue")
    parser.add_argument("--clean", action="store_true", help="the never-backdoored twin")
    parser.add_argument("--seed", type=int, default=1, help="1 keeps the plain name")
    parser.add_argument(
        "--epochs", type=int, default=None, help="instead of the recipe's; adds _eN to the name"
    )
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    arch, _, prefix = DATASETS[args.dataset]
    train_idx, dev_idx = dev_split(args.dataset)
    torch.save({"train_idx": train_idx, "dev_idx": dev_idx}, split_path(args.dataset))
    train = load_dataset(args.dataset, "train")
    suffix = ("" if args.seed == 1 else f"_s{args.seed}") + (
        f"_e{args.epochs}" if args.epochs else ""
    )
    data = dict(test_data=train.subset(dev_idx, args.dataset), seed=args.seed, overwrite=True)
    if args.epochs:
        data["epochs"] = args.epochs
    name = "clean" if args.clean else args.attack
    out = RUNS / f"{prefix}{name}{suffix}"
    if args.clean:
        train_model(train.subset(train_idx, args.dataset), arch, out=out, **data)
    else:
        attack_model(train.subset(train_idx, args.dataset), arch, args.attack, out=out, **data)


if __name__ == "__main__":
    main()
