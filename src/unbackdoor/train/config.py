"""The training configuration shared by clean training, poisoning, defenses and re-tuning."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from unbackdoor.utils.config import check, check_choice, check_types

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "triangle", "cosine", "linear", "constant")
FLIPS = ("random", "alternating", "none")


#: fields added after checkpoints existed, at the value that reproduces those runs
ADDED_LATER = {"adv_eps": 0.0, "adv_step": 0.0, "adv_steps": 1}


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`unbackdoor.train.train`; every field is checked in ``validate``.

    ``schedule``: ``onecycle`` (linear warm-up over ``warmup`` of the steps, then linear decay to
    zero), ``triangle`` (airbench's: from 0.2 up to 1 at 23% of the steps, down to 0.07),
    ``cosine`` (cosine decay, optional
    warm-up), ``linear`` (linear decay) or ``constant``. ``augment``: ``None`` uses the data set's
    standard augmentation, ``False`` none. ``ema``: decay of an exponential moving average of the
    weights that replaces them at the end (``None`` for none). ``lookahead``: airbench's
    lookahead, an EMA of the weights copied back into the model every ``lookahead_every`` steps
    after ``lookahead_start`` of training, with a decay that grows with progress.
    ``crop_padding``/``flip`` override the data set's standard augmentation (``flip``:
    ``random``, ``alternating`` (each sample flipped in every other epoch) or ``none``).
    ``adv_eps``: adversarial training at this L_inf radius on the 0-255 pixel scale (0 trains on
    clean images): FGSM with a random start (``adv_steps=1``, step ``adv_step``, default
    ``1.25 * adv_eps``) or PGD with ``adv_steps`` steps (default step ``2.5 * adv_eps / steps``).
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.2
    label_smoothing: float = 0.0
    augment: bool | None = None
    bf16: bool = False
    channels_last: bool = False
    crop_padding: int | None = None
    flip: str = "random"
    ema: float | None = None
    lookahead: bool = False
    lookahead_start: float = 0.3
    lookahead_every: int = 5
    drop_last: bool = False
    grad_clip: float | None = None
    max_steps: int | None = None
    adv_eps: float = 0.0
    adv_step: float = 0.0
    adv_steps: int = 1
    seed: int = 0
    device: str | torch.device = "auto"

    def validate(self) -> TrainConfig:
        o = "TrainConfig"
        check_types(self, o)
        check(
            self.epochs >= 0,
            o,
            "epochs",
            self.epochs,
            "a non-negative integer",
        )
        check(
            self.batch_size >= 1,
            o,
            "batch_size",
            self.batch_size,
            "a positive integer",
        )
        check_choice(o, "optimizer", self.optimizer, OPTIMIZERS)
        check_choice(o, "schedule", self.schedule, SCHEDULES)
        check(self.lr > 0, o, "lr", self.lr, "a positive number")
        check(0 <= self.momentum < 1, o, "momentum", self.momentum, "a number in [0, 1)")
        check(self.weight_decay >= 0, o, "weight_decay", self.weight_decay, ">= 0")
        check(0 <= self.warmup < 1, o, "warmup", self.warmup, "a fraction in [0, 1)")
        check(
            0 <= self.label_smoothing < 1,
            o,
            "label_smoothing",
            self.label_smoothing,
            "a number in [0, 1)",
        )
        check(self.ema is None or 0 < self.ema < 1, o, "ema", self.ema, "None or in (0, 1)")
        check_choice(o, "flip", self.flip, FLIPS)
        check(
            self.crop_padding is None or self.crop_padding >= 0,
            o,
            "crop_padding",
            self.crop_padding,
            "None or >= 0",
        )
        check(
            0 <= self.lookahead_start < 1, o, "lookahead_start", self.lookahead_start, "in [0, 1)"
        )
        check(self.lookahead_every >= 1, o, "lookahead_every", self.lookahead_every, ">= 1")
        check(
            self.grad_clip is None or self.grad_clip > 0,
            o,
            "grad_clip",
            self.grad_clip,
            "None or > 0",
        )
        check(
            self.max_steps is None or self.max_steps >= 1,
            o,
            "max_steps",
            self.max_steps,
            "None or >= 1",
        )
        check(
            isinstance(self.adv_eps, (int, float)) and 0 <= self.adv_eps <= 128,
            o,
            "adv_eps",
            self.adv_eps,
            "a radius in [0, 128] on the 0-255 scale (0: no adversarial training)",
        )
        check(
            isinstance(self.adv_step, (int, float)) and self.adv_step >= 0,
            o,
            "adv_step",
            self.adv_step,
            ">= 0 (0: the default step of adv_steps)",
        )
        check(
            not self.adv_step or self.adv_eps > 0,
            o,
            "adv_step",
            self.adv_step,
            "0 unless adv_eps > 0 (the step of adversarial training)",
        )
        check(
            isinstance(self.adv_steps, int) and self.adv_steps >= 1,
            o,
            "adv_steps",
            self.adv_steps,
            "an integer >= 1 (1: FGSM-RS, more: PGD)",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
