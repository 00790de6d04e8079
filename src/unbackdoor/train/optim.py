"""Optimizers and learning-rate schedules, built from a :class:`TrainConfig`."""

from __future__ import annotations

import math

import torch
from torch import nn

from unbackdoor.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters; models may add their own groups.

    A model with a ``param_groups(weight_decay)`` method (e.g. one that trains some parameters
    at a different rate) decides for itself.
    """
    custom = getattr(model, "param_groups", None)
    if callable(custom):
        return custom(weight_decay)
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    for g in groups:  # per-group lr multipliers are honoured by the schedule
        g.setdefault("lr_scale", 1.0)
        g["lr"] = cfg.lr * g["lr_scale"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The multiplier of the base learning rate at ``step`` of ``total_steps``."""
    t = step / max(1, total_steps)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - t)
    if cfg.schedule == "triangle":  # airbench94: 0.2 -> 1 at 23% of the steps -> 0.07
        peak = 0.23
        if t < peak:
            return 0.2 + 0.8 * t / peak
        return 1.0 - 0.93 * (t - peak) / (1.0 - peak)
    if cfg.warmup > 0 and t < cfg.warmup:
        return t / cfg.warmup
    u = (t - cfg.warmup) / max(1e-12, 1.0 - cfg.warmup)
    if cfg.schedule == "onecycle":
        return max(0.0, 1.0 - u)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, u)))  # cosine


def set_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int, total: int) -> float:
    f = lr_factor(cfg, step, total)
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * f * g.get("lr_scale", 1.0)
    return cfg.lr * f
