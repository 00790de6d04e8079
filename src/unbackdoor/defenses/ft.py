"""FT: fine-tuning on the defender's clean data, the simplest baseline.

Fine-tuning as a backdoor defense is studied by Liu, Dolan-Gavitt, Garg, "Fine-Pruning:
Defending Against Backdooring Attacks on Deep Neural Networks" (RAID 2018, arXiv 1805.12185);
the schedule follows BackdoorBench's ``ft`` (Wu et al., NeurIPS 2022 Datasets and Benchmarks,
``config/defense/ft/config.yaml``): SGD, momentum 0.9, weight decay 5e-4, cosine learning rate
from 0.01. BackdoorBench runs 100 epochs of batch 256 over its 5% of the training set (about
1,000 steps); the default here is 10 epochs of batch 128 (160 steps on 2,000 images), what a CPU
affords in a grid; ``epochs=100, batch_size=256`` is BackdoorBench's schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.defenses.base import Defense, DefenseOutput
from unbackdoor.defenses.registry import register_defense
from unbackdoor.eval.metrics import evaluate
from unbackdoor.train import TrainConfig, train


@register_defense
@dataclass
class FineTuning(Defense):
    """Fine-tune on the defender's clean data (the standard schedule)."""

    name: ClassVar[str] = "ft"

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128
    weight_decay: float = 5e-4

    def validate(self) -> None:
        self._require(self.epochs >= 1, "epochs", ">= 1")
        self._require(self.lr > 0, "lr", "> 0")
        self._require(self.batch_size >= 1, "batch_size", ">= 1")

    def run(
        self, model: nn.Module, clean: ImageDataset, val: ImageDataset, *, known_attack: Any = None
    ) -> DefenseOutput:
        cfg = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=0.9,
            weight_decay=self.weight_decay,
            schedule="cosine",
            warmup=0.0,
            seed=self.seed,
            device=self.device,
        )
        result = train(model, clean, cfg, desc="ft")
        return DefenseOutput(
            model,
            diagnostics={
                "history": result.history,
                "val_clean_acc": evaluate(model, val).clean_acc,
            },
        )
