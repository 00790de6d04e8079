"""The one training loop of unbackdoor.

Clean training, poisoned training, fine-tuning inside defenses and the re-tuning attack all call
:func:`train`. It supports SGD/Adam, one-cycle/cosine schedules, label smoothing, an EMA of the
weights, bf16 autocast and channels_last, a progress bar, a checkpoint after every epoch with
exact resume, and DDP under ``torchrun``. A custom objective is a ``loss_fn(model, batch)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import Batch, iterate, num_batches
from unbackdoor.data.transforms import Augment, default_augment
from unbackdoor.errors import ConfigError, DataError
from unbackdoor.train.adversarial import adversarial_loss
from unbackdoor.train.config import ADDED_LATER, TrainConfig
from unbackdoor.train.distributed import init_distributed
from unbackdoor.train.optim import build_optimizer, set_lr
from unbackdoor.utils.config import without_added_later
from unbackdoor.utils.io import atomic_write
from unbackdoor.utils.precision import autocast as bf16_autocast
from unbackdoor.utils.progress import progress
from unbackdoor.utils.runinfo import resolve_device

LossFn = Callable[[nn.Module, Batch], torch.Tensor]
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    """What a training run did: per-epoch history, wall time and throughput."""

    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time: float = 0.0
    train_images: int = 0
    resumed_from_epoch: int = 0
    resumed_seconds: float = 0.0  # wall time of the epochs finished before a resume

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.wall_time if self.wall_time > 0 else 0.0


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(batch.x), batch.y, label_smoothing=label_smoothing)

    return loss


def train(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    checkpoint_dir: str | Path | None = None,
    on_epoch_end: Callable[[int, nn.Module], dict[str, Any]] | None = None,
    on_step_end: Callable[[int, nn.Module], None] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place on ``data``; returns a :class:`TrainResult`.

    With ``checkpoint_dir``, the state after every epoch is saved there and a later call with the
    same config resumes after the last finished epoch.
    """
    cfg = (config or TrainConfig()).validate()
    if len(data) == 0:
        raise DataError(f"{data.name}: cannot train on an empty data set")
    device = resolve_device(cfg.device)
    ctx = init_distributed(device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    spec = getattr(model, "spec", None)
    if spec is not None and spec.num_classes != data.num_classes:
        raise DataError(
            f"{data.name}: {data.num_classes} classes but the model has {spec.num_classes}"
        )
    if spec is not None and tuple(data.input_shape) != (spec.in_channels, *spec.input_size):
        raise DataError(
            f"{data.name}: images of shape {data.input_shape}, the model expects "
            f"{(spec.in_channels, *spec.input_size)}"
        )
    augment = None
    if cfg.augment is not False:
        augment = default_augment(data.name, data.images.shape[-1])
        if cfg.crop_padding is not None or cfg.flip != "random":
            augment = Augment(
                crop_padding=cfg.crop_padding
                if cfg.crop_padding is not None
                else (augment.crop_padding if augment else 0),
                flip=cfg.flip,
                seed=cfg.seed,
            )
    if loss_fn is not None and cfg.adv_eps:
        raise ConfigError(
            f"{desc}: adv_eps={cfg.adv_eps} asks for adversarial training, but a custom loss_fn "
            "was given; put the adversarial examples in that loss instead"
        )
    if cfg.adv_eps:
        loss_fn = adversarial_loss(
            cfg.adv_eps / 255, cfg.adv_step / 255, cfg.adv_steps, cfg.label_smoothing
        )
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing)
    net: nn.Module = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(model, cfg)
    ema = _Ema(model, cfg.ema) if cfg.ema else None
    lookahead: _Lookahead | None = None
    epoch_hook = getattr(model, "on_train_epoch", None)
    steps_per_epoch = num_batches(
        len(data), cfg.batch_size, drop_last=cfg.drop_last, world_size=ctx.world_size
    )
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    result = TrainResult()
    start_epoch, step = 0, 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.is_file():
        start_epoch, step, result.history = _restore(ckpt_path, cfg, model, optimizer, ema)
        result.resumed_from_epoch = start_epoch
        # Count the epochs run before the interruption, so a resumed run reports the whole
        # training time and throughput, not only the tail it ran itself.
        result.resumed_seconds = sum(float(r.get("seconds", 0.0)) for r in result.history)
        result.train_images = sum(int(r.get("images", 0)) for r in result.history)
    autocast = bf16_autocast(device, cfg.bf16)
    t_start = time.perf_counter()
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total_steps:
            break
        t0 = time.perf_counter()
        if callable(epoch_hook):  # e.g. a model that trains some parameters only early on
            epoch_hook(epoch, cfg.epochs)
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
        batches = iterate(
            data,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            augment=augment,
            device=device,
            rank=ctx.rank,
            world_size=ctx.world_size,
            channels_last=cfg.channels_last,
            drop_last=cfg.drop_last,
        )
        bar = progress(
            batches,
            desc=f"{desc} {epoch + 1}/{cfg.epochs}",
            total=steps_per_epoch,
            enabled=ctx.is_main,
        )
        for batch in bar:
            if step >= total_steps:
                break
            lr = set_lr(optimizer, cfg, step, total_steps)
            with autocast:
                loss = loss_fn(net, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                    f"lower the learning rate (lr={cfg.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            step += 1
            if cfg.lookahead and step >= cfg.lookahead_start * total_steps:
                if lookahead is None:
                    lookahead = _Lookahead(model)
                elif step % cfg.lookahead_every == 0:
                    decay = 0.95**cfg.lookahead_every * (step / total_steps) ** 3
                    lookahead.update(model, decay)
            if on_step_end is not None:
                on_step_end(step, model)
                model.train()
            n = batch.y.numel()
            sums += torch.tensor([loss.item() * n, 0.0, n], dtype=torch.float64)
            if step % 20 == 0 or step == steps_per_epoch:
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", lr=f"{lr:.3g}")
        if lookahead is not None:  # end every epoch on the lookahead (EMA) weights
            lookahead.update(model, 1.0)
        ctx.all_reduce_sum(sums)
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(sums[0] / max(1.0, sums[2])),
            "lr": lr if steps_per_epoch else 0.0,
            "seconds": seconds,
            "images": int(sums[2]),
            "images_per_second": float(sums[2]) / seconds if seconds > 0 else 0.0,
        }
        result.train_images += int(sums[2])
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch + 1, model))
            model.train()
        result.history.append(record)
        if ckpt_path is not None and ctx.is_main:
            _save(ckpt_path, cfg, epoch + 1, step, result.history, model, optimizer, ema)
        ctx.barrier()
    result.wall_time = time.perf_counter() - t_start + result.resumed_seconds
    if lookahead is not None:
        lookahead.update(model, 1.0)
    if ema is not None:
        ema.copy_to(model)
    model.eval()
    return result


def config_hash(cfg: TrainConfig) -> str:
    # options added later are left out at their defaults, so older checkpoints still resume
    keep = without_added_later(cfg.to_dict(), ADDED_LATER)
    keep.pop("device")
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class _Ema:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            s.lerp_(p.detach(), 1.0 - self.decay)
        for s, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            s.copy_(b)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow.state_dict())


class _Lookahead:
    """airbench's lookahead: an EMA of the state that is copied back into the model."""

    def __init__(self, model: nn.Module) -> None:
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for e, v in zip(self.ema.values(), model.state_dict().values(), strict=True):
            if v.dtype.is_floating_point:
                e.lerp_(v, 1 - decay)
                v.copy_(e)


def _save(
    path: Path,
    cfg: TrainConfig,
    epoch: int,
    step: int,
    history: list,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: _Ema | None,
) -> None:
    state = {
        "config_hash": config_hash(cfg),
        "epoch": epoch,
        "step": step,
        "history_json": json.dumps(history),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.shadow.state_dict() if ema is not None else None,
    }
    atomic_write(path, lambda p: torch.save(state, p))


def _restore(
    path: Path,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: _Ema | None,
) -> tuple[int, int, list]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any corruption means: cannot resume)
        raise ConfigError(
            f"{path}: cannot resume from this checkpoint ({e}); delete it to restart"
        ) from None
    if state.get("config_hash") != config_hash(cfg):
        raise ConfigError(
            f"{path}: the checkpoint was made with a different training config; delete it or "
            "use another output directory to start over"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state.get("ema") is not None:
        ema.shadow.load_state_dict(state["ema"])
    return int(state["epoch"]), int(state["step"]), json.loads(state["history_json"])
