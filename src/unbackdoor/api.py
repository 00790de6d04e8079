"""The Python API that the CLI is a thin layer over: train a model, evaluate an artifact.

>>> trained = unbackdoor.train_model("mnist", epochs=1, out="runs/mnist")
>>> metrics = unbackdoor.evaluate_artifact("runs/mnist")
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unbackdoor.data import ImageDataset
from unbackdoor.data.registry import load_dataset
from unbackdoor.errors import ArtifactError, ConfigError, DataError
from unbackdoor.eval.metrics import Metrics, evaluate
from unbackdoor.models import create_model, is_artifact, load_model, save_model
from unbackdoor.models.artifact import Manifest
from unbackdoor.train import TrainConfig, TrainResult, train
from unbackdoor.train.recipes import default_model_for, recipe
from unbackdoor.utils.io import atomic_write_json
from unbackdoor.utils.runinfo import run_info, seed_everything

CHECKPOINT_DIR = ".checkpoint"


@dataclass
class TrainedModel:
    """A trained model with its test metrics and training record."""

    model: nn.Module
    class_names: list[str]
    metrics: Metrics
    result: TrainResult
    config: TrainConfig
    out: Path | None = None


def channel_stats(data: ImageDataset, limit: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (up to ``limit`` of) the images, for the model's first layer."""
    x = data.images[:limit].float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def build_model(name: str, data: ImageDataset, **kwargs: Any) -> nn.Module:
    """A fresh model for ``data`` (its class count, input shape and channel statistics)."""
    mean, std = channel_stats(data)
    c, h, w = data.input_shape
    model = create_model(
        name, data.num_classes, in_channels=c, input_size=(h, w), mean=mean, std=std, **kwargs
    )
    init = getattr(model, "init_from_data", None)
    if callable(init):
        init(data.images[:5000].float().div_(255.0))
    return model


def prepare_out(out: str | Path | None, overwrite: bool) -> Path | None:
    """Refuse to overwrite a finished artifact unless asked (an unfinished run resumes instead)."""
    if out is None:
        return None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory")
    from unbackdoor.clip.model.store import is_clip_artifact

    finished = is_artifact(out) or is_clip_artifact(out)
    if finished and not (out / CHECKPOINT_DIR).exists() and not overwrite:
        raise ArtifactError(f"{out}: already holds a finished model; pass overwrite (--force)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _load_splits(
    dataset: str | ImageDataset, test_data: ImageDataset | None
) -> tuple[ImageDataset, ImageDataset, str]:
    if isinstance(dataset, ImageDataset):
        if test_data is None:
            raise DataError("pass test_data when training on an in-memory data set")
        return dataset, test_data, dataset.name
    train_data = load_dataset(dataset, "train")
    if test_data is None:
        test_data = load_dataset(dataset, "test", class_names=train_data.class_names)
    return train_data, test_data, str(dataset)


def _fit(
    net: nn.Module,
    name: str,
    train_data: ImageDataset,
    test_data: ImageDataset,
    cfg: TrainConfig,
    out_dir: Path | None,
    record: dict[str, Any],
    *,
    trigger: Any = None,
    attack_labels: Any = None,
    save_extra: Any = None,
) -> TrainedModel:
    """Train, evaluate and (with ``out_dir``) save: shared by clean and poisoned training."""
    ckpt = out_dir / CHECKPOINT_DIR if out_dir is not None else None
    t0 = time.perf_counter()
    result = train(net, train_data, cfg, checkpoint_dir=ckpt, desc=f"train {name}")
    metrics = evaluate(net, test_data, trigger=trigger, attack_labels=attack_labels)
    trained = TrainedModel(net, train_data.class_names, metrics, result, cfg, out_dir)
    if out_dir is not None and _is_main_process():
        record = {
            **run_info(cfg.seed),
            **record,
            "model": name,
            "train_samples": len(train_data),
            "config": cfg.to_dict(),
            "wall_time": time.perf_counter() - t0 + result.resumed_seconds,
            "resumed_from_epoch": result.resumed_from_epoch,
            "train_images_per_second": result.images_per_second,
            "history": result.history,
        }
        save_model(
            net,
            out_dir,
            class_names=train_data.class_names,
            dataset=record.get("dataset"),
            seed=cfg.seed,
            extra={"train": {"config": cfg.to_dict(), "epochs": cfg.epochs}},
        )
        if save_extra is not None:
            save_extra(out_dir)
        atomic_write_json(out_dir / "train.json", record)
        atomic_write_json(out_dir / "metrics.json", metrics.to_dict())
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    return trained


def train_model(
    dataset: str | ImageDataset = "mnist",
    model: str | None = None,
    *,
    test_data: ImageDataset | None = None,
    epochs: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    train_samples: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **train_options: Any,
) -> TrainedModel:
    """Train a model on ``dataset`` (a registered name, a folder path or an ImageDataset).

    Without ``model`` the data set's default is used; without options, the model's recipe.
    With ``out``, the artifact, ``metrics.json`` and ``train.json`` are written there, and an
    interrupted run resumes from its last finished epoch.
    """
    if epochs is not None and epochs < 0:
        raise DataError(f"epochs must be a non-negative integer, got {epochs}")
    out_dir = prepare_out(out, overwrite)
    train_data, test_data, dataset_name = _load_splits(dataset, test_data)
    if train_samples is not None:
        train_data = train_data.sample(train_samples, seed)
    name = model or default_model_for(dataset_name, train_data.input_shape[-1])
    cfg = recipe(name, epochs=epochs, seed=seed, **train_options)
    seed_everything(seed)
    net = build_model(name, train_data, **(model_kwargs or {}))
    return _fit(net, name, train_data, test_data, cfg, out_dir, {"dataset": dataset_name})


def load_test_data(manifest: Manifest, dataset: str | None, split: str = "test") -> ImageDataset:
    """The evaluation data of an artifact, mapped to its class names and input shape."""
    name = dataset or manifest.dataset
    if not name:
        raise DataError("the manifest names no data set: pass one (--dataset)")
    spec = manifest.spec
    return load_dataset(
        name,
        split,
        class_names=manifest.class_names,
        image_size=tuple(spec.input_size),
        channels=spec.in_channels,
    )


def evaluate_artifact(
    directory: str | Path,
    dataset: str | None = None,
    *,
    split: str = "test",
    device: str | torch.device | None = None,
    batch_size: int = 256,
    attack_from: str | Path | None = None,
) -> Metrics:
    """Clean accuracy of the model in ``directory`` (and ASR/RA once it carries an attack).

    ``attack_from``: measure ASR/RA with the trigger of another artifact's ``attack.json``
    (for example a never-backdoored model against an attack's trigger).
    """
    from unbackdoor.attacks.store import has_attack

    model, manifest = load_model(directory, device or "cpu")
    data = load_test_data(manifest, dataset, split)
    if attack_from is None and not has_attack(directory):
        return evaluate(model, data, batch_size=batch_size)
    record = _attack_for(directory, manifest, attack_from, "measure")
    return evaluate(
        model,
        data,
        trigger=record.trigger,
        attack_labels=record.attack_labels,
        batch_size=batch_size,
    )


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def retune_artifact(
    directory: str | Path,
    dataset: str | None = None,
    config: Any = None,
    *,
    attack_from: str | Path | None = None,
) -> Any:
    """The re-tuning attack on the model in ``directory`` with its own trigger (attack.json),
    or with ``attack_from``'s: on a never-backdoored model of the same architecture that is
    the floor of DESIGN.md section 4 (what a few poisoned samples teach a clean model).

    A CLIP model directory goes to :func:`unbackdoor.clip.api.retune_clip_artifact`, whose
    default learning rate is the CLIP one (``config=None``).
    """
    from unbackdoor.clip.model.store import is_clip_source
    from unbackdoor.eval.retune import retune_attack

    if is_clip_source(directory):
        from unbackdoor.clip.api import retune_clip_artifact

        if attack_from is not None:
            raise ConfigError("attack_from is not supported for CLIP models yet")
        return retune_clip_artifact(directory, dataset, config)
    model, manifest = load_model(directory)
    record = _attack_for(directory, manifest, attack_from, "re-tune")
    test = load_test_data(manifest, dataset, "test")
    pool = load_test_data(manifest, dataset, "train")
    return retune_attack(model, pool, test, record, config)


def _attack_for(
    directory: str | Path, manifest: Manifest, attack_from: str | Path | None, purpose: str
) -> Any:
    """The attack record of ``directory``, or of ``attack_from`` once its model is checked to
    take the same inputs and classes (a trigger of another data set would fail deep inside)."""
    from unbackdoor.attacks.store import has_attack, load_attack
    from unbackdoor.models.artifact import load_manifest

    source = directory if attack_from is None else attack_from
    if not has_attack(source):
        raise ArtifactError(f"{source}: no attack.json, so no trigger to {purpose} with")
    if attack_from is not None and is_artifact(attack_from):
        other = load_manifest(attack_from)
        for what, mine, theirs in [
            ("input shape", _shape(manifest), _shape(other)),
            ("classes", list(manifest.class_names), list(other.class_names)),
        ]:
            if mine != theirs:
                raise ConfigError(
                    f"{attack_from}: its model's {what} ({theirs}) differ from {directory}'s "
                    f"({mine}); its trigger does not apply to this model"
                )
    return load_attack(source)


def _shape(manifest: Manifest) -> list[int]:
    return [manifest.spec.in_channels, *manifest.spec.input_size]
