"""Align the offline pretrained image-text model (EfficientNet-Lite0 + MiniLM-L6) on CIFAR-10
and MNIST caption pairs, then report its CIFAR-10 zero-shot test accuracy.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip/align.py --cifar 15000 --mnist 1500 \
        --epochs 5 --train-blocks 1 --out runs/clip/offline

``--test 0`` (the default) evaluates on the full CIFAR-10 test set (10,000 images). The frozen
trunk's features are memoised per image (``OfflineClip``'s feature cache), so only the first
epoch pays for the trunk.

Writes the CLIP artifact to --out and a JSON row (config, accuracy, wall time) to
benchmarks/clip/align.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from unbackdoor.clip.api import clip_train_config
from unbackdoor.clip.data import CaptionedDataset, caption_pairs
from unbackdoor.clip.eval import retrieval_recall, zero_shot_metrics
from unbackdoor.clip.model import save_clip
from unbackdoor.clip.pretrained import OfflineClip
from unbackdoor.clip.train import finetune_contrastive
from unbackdoor.data import ImageDataset, load_dataset
from unbackdoor.utils.runinfo import library_versions


def merged_pairs(cifar: int, mnist: int, seed: int) -> CaptionedDataset:
    """CIFAR-10 and MNIST (as 32x32 RGB) pairs with varied captions, 20 classes in all."""
    c = load_dataset("cifar10", "train").sample(cifar, seed)
    m = load_dataset("mnist", "train", image_size=(32, 32), channels=3).sample(mnist, seed)
    pc, pm = caption_pairs(c, seed=seed), caption_pairs(m, seed=seed + 1)
    names = list(c.class_names) + [f"digit_{n}" for n in m.class_names]
    return CaptionedDataset(
        torch.cat([pc.images, pm.images]),
        torch.cat([pc.labels, pm.labels + c.num_classes]),
        names,
        "cifar10+mnist",
        {},
        pc.captions + pm.captions,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", type=int, default=5000)
    ap.add_argument("--mnist", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--train-blocks", type=int, default=0)
    ap.add_argument("--test", type=int, default=0, help="0: all 10,000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/clip/offline")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    pairs = merged_pairs(a.cifar, a.mnist, a.seed)
    model = OfflineClip(image_size=a.image_size, train_blocks=a.train_blocks)
    cfg = clip_train_config(a.epochs, a.lr, a.seed, "cpu")
    res = finetune_contrastive(model, pairs, cfg, desc="align")
    t_train = time.perf_counter() - t0
    test: ImageDataset = load_dataset("cifar10", "test")
    if 0 < a.test < len(test):
        test = test.sample(a.test, a.seed)
    zs = zero_shot_metrics(model, test)
    rec = retrieval_recall(model, caption_pairs(test, seed=1))
    cache = model.visual.cache
    save_clip(model, a.out, class_names=list(test.class_names), extra={"dataset": "cifar10"})
    row = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip/align.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()),
        "config": vars(a),
        "cifar10_zero_shot_acc": zs.clean_acc,
        "cifar10_test_images": len(test),
        "retrieval_image_to_text": rec.image_to_text,
        "retrieval_text_to_image": rec.text_to_image,
        "train_loss_per_epoch": [h["loss"] for h in res.history],
        "train_seconds": t_train,
        "feature_cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
        "wall_seconds": time.perf_counter() - t0,
        "versions": library_versions(),
    }
    path = Path(__file__).with_name("align.json")
    rows = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(rows + [row], indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
