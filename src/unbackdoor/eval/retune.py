"""The re-tuning attack: does a removed backdoor come back after brief fine-tuning?

"Superficial safety" (Min et al., "Uncovering, Explaining, and Mitigating the Superficial Safety
of Backdoor Defense", NeurIPS 2024): many purified models regain their backdoor after a few steps
of fine-tuning on a small, mostly clean set with a few poisoned samples. The attack here
fine-tunes a copy of the model on ``samples`` training images of which ``poison_rate`` carry the
model's own trigger (from its ``attack.json``), then measures ASR. Run on a never-backdoored
model of the same architecture it gives the floor; on the unpurified backdoored model, the
ceiling. Defaults are the MNIST calibration of DESIGN.md section 4 (1,000 samples, 1% poisoned,
2 epochs, Adam lr 5e-4), which leaves a clean model near 1.5% ASR.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unbackdoor.attacks.poison import poison_dataset
from unbackdoor.attacks.store import AttackRecord
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.eval.metrics import Metrics, evaluate
from unbackdoor.train import TrainConfig, train
from unbackdoor.train.config import OPTIMIZERS
from unbackdoor.utils.config import check, check_choice, check_types


@dataclass
class RetuneConfig:
    """The re-tuning attack's budget (see the module docstring for the calibration)."""

    samples: int = 1000
    poison_rate: float = 0.01
    epochs: int = 2
    lr: float = 5e-4
    optimizer: str = "adam"
    batch_size: int = 128
    eval_every: int | None = None  # steps between points of the ASR curve (None: ends only)
    seed: int = 0
    device: str | torch.device = "auto"  # where the fine-tuning runs (cpu, cuda, auto)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The fine-tuning recipe of the attack: constant lr, no warm-up, no weight decay."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            schedule="constant",
            warmup=0.0,
            weight_decay=0.0,
            seed=self.seed,
            device=self.device,
            **overrides,
        )

    def validate(self) -> RetuneConfig:
        o = "RetuneConfig"
        check_types(self, o)
        check(self.samples >= 10, o, "samples", self.samples, ">= 10")
        check(0 <= self.poison_rate < 1, o, "poison_rate", self.poison_rate, "in [0, 1)")
        check(self.epochs >= 1, o, "epochs", self.epochs, ">= 1")
        check(self.lr > 0, o, "lr", self.lr, "> 0")
        check(self.batch_size >= 1, o, "batch_size", self.batch_size, ">= 1")
        check(
            self.eval_every is None or self.eval_every >= 1,
            o,
            "eval_every",
            self.eval_every,
            "None or >= 1",
        )
        check_choice(o, "optimizer", self.optimizer, OPTIMIZERS)
        return self


@dataclass
class RetuneResult:
    before: Metrics
    after: Metrics
    curve: list[dict[str, Any]] = field(default_factory=list)  # ASR against re-tuning steps
    config: dict[str, Any] = field(default_factory=dict)


def retune_attack(
    model: nn.Module,
    pool: ImageDataset,
    test: ImageDataset,
    attack: AttackRecord,
    config: RetuneConfig | None = None,
    *,
    before: Metrics | None = None,
) -> RetuneResult:
    """Fine-tune a copy of ``model`` on a few poisoned samples from ``pool``; ASR before/after.

    ``pool`` is the attacker's source of training images (for example the training split);
    ``test`` is where CA and ASR are measured. ``before``: ``model``'s metrics on ``test``
    with ``attack``'s trigger when the caller has just measured them (one evaluation saved).
    """
    cfg = (config or RetuneConfig()).validate()
    subset = pool.sample(min(cfg.samples, len(pool)), cfg.seed + 104_729)
    poisoned = poison_dataset(subset, attack.attack, attack.policy, cfg.poison_rate, seed=cfg.seed)
    victim = copy.deepcopy(model)
    if before is None:
        before = evaluate(victim, test, trigger=attack.trigger, attack_labels=attack.attack_labels)
    curve = [{"step": 0, "asr": before.asr, "clean_acc": before.clean_acc}]
    tc = cfg.train_config()

    last: dict[int, Metrics] = {}

    def point(step: int, net: nn.Module) -> None:
        if cfg.eval_every and step % cfg.eval_every == 0:
            m = evaluate(net, test, trigger=attack.trigger, attack_labels=attack.attack_labels)
            curve.append({"step": step, "asr": m.asr, "clean_acc": m.clean_acc})
            last.clear()
            last[step] = m

    train(victim, poisoned.data, tc, on_step_end=point if cfg.eval_every else None, desc="re-tune")
    steps = cfg.epochs * -(-len(poisoned) // cfg.batch_size)
    after = last.get(steps)  # the curve's last point is the final model (no EMA here)
    if after is None:
        after = evaluate(victim, test, trigger=attack.trigger, attack_labels=attack.attack_labels)
    if curve[-1]["step"] != steps:
        curve.append({"step": steps, "asr": after.asr, "clean_acc": after.clean_acc})
    return RetuneResult(
        before, after, curve, {**cfg.__dict__, "poisoned": int(poisoned.is_poisoned.sum())}
    )
