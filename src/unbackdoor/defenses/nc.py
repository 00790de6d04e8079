"""NC: Neural Cleanse (Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks
in Neural Networks", IEEE S&P 2019).

Per-class trigger inversion (through the shared :mod:`unbackdoor.inversion`), the MAD anomaly
index over the inverted masks' L1 norms to decide whether a backdoor exists and which class is
its target (index above ``anomaly_threshold``, 2 in the paper), then unlearning: fine-tuning on
the defender's data where ``stamp_fraction`` (20% in the paper) of the images carry the
inverted trigger with their true labels. When no class is anomalous the model is returned
unchanged and the report says "no backdoor". Deviation: the anomaly index is computed on log
norms by default (see :func:`unbackdoor.inversion.mad_anomaly`); ``log_anomaly=False`` gives
the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import Batch
from unbackdoor.defenses.base import Defense, DefenseOutput
from unbackdoor.defenses.registry import register_defense
from unbackdoor.inversion import InversionConfig, invert, mad_anomaly
from unbackdoor.train import TrainConfig, train
from unbackdoor.utils.runinfo import resolve_device


@register_defense
@dataclass
class NeuralCleanse(Defense):
    """Neural Cleanse: per-class inversion, MAD anomaly detection, unlearning."""

    name: ClassVar[str] = "nc"
    relative_cost: ClassVar[float] = 4.0

    inversion_steps: int = 300
    anomaly_threshold: float = 2.0
    log_anomaly: bool = True
    stamp_fraction: float = 0.2
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128

    def validate(self) -> None:
        self._require(self.inversion_steps >= 1, "inversion_steps", ">= 1")
        self._require(self.anomaly_threshold > 0, "anomaly_threshold", "> 0")
        self._require(0 < self.stamp_fraction < 1, "stamp_fraction", "in (0, 1)")
        self._require(self.epochs >= 1, "epochs", ">= 1")
        self._require(self.lr > 0, "lr", "> 0")
        self._require(self.batch_size >= 1, "batch_size", ">= 1")

    def run(
        self, model: nn.Module, clean: ImageDataset, val: ImageDataset, *, known_attack: Any = None
    ) -> DefenseOutput:
        device = resolve_device(self.device)
        model.to(device)
        res = invert(
            model,
            clean,
            InversionConfig(steps=self.inversion_steps),
            seed=self.seed,
            device=device,
            desc="nc: inversion",
        )
        anomaly = mad_anomaly(res.sizes, log=self.log_anomaly)
        k = int(anomaly.argmax())
        found = bool(anomaly[k] >= self.anomaly_threshold)
        diag = {
            "sizes": res.sizes.tolist(),
            "anomaly": anomaly.tolist(),
            "fooling": res.fooling.tolist(),
        }
        images = {
            f"inverted_trigger_class{c}": res.family.images()["trigger"][i]
            for i, c in enumerate(res.classes)
        }
        if not found:
            diag["result"] = "no backdoor: no class's anomaly index reaches the threshold"
            return DefenseOutput(model, diag, images, None, False, float(anomaly[k]))
        fam = res.family
        gen = torch.Generator().manual_seed(self.seed)

        def loss(net: nn.Module, batch: Batch) -> torch.Tensor:
            x = batch.x
            stamp = (torch.rand(x.shape[0], generator=gen) < self.stamp_fraction).to(x.device)
            with torch.no_grad():
                xs = fam.stamp(x, k)
            x = torch.where(stamp[:, None, None, None], xs, x)
            return F.cross_entropy(net(x), batch.y)

        cfg = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="cosine",
            warmup=0.0,
            seed=self.seed,
            device=self.device,
        )
        train(model, clean, cfg, loss_fn=loss, desc="nc: unlearn")
        diag["result"] = f"backdoor found: target {res.classes[k]}"
        return DefenseOutput(model, diag, images, res.classes[k], True, float(anomaly[k]))
