"""Default training recipes per model: what ``unbackdoor train`` uses unless told otherwise.

The recipes were measured on the 2-core CPU these tools target (see ``benchmarks/``). A recipe is
a :class:`TrainConfig` plus a default epoch count; explicit options override it.
"""

from __future__ import annotations

from typing import Any

from unbackdoor.train.config import TrainConfig
from unbackdoor.utils.config import from_dict

_RECIPES: dict[str, dict[str, Any]] = {
    "small_cnn": dict(
        epochs=2,
        batch_size=128,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="onecycle",
        warmup=0.2,
        bf16=True,
        channels_last=True,
    ),
    # airbench94's recipe (lr 11.5 and wd 0.0153 in its units = SGD lr 1.5, wd 1.33e-3 at
    # batch 1024 and momentum 0.85), measured in benchmarks/foundation.
    "fastnet": dict(
        epochs=12,
        batch_size=1024,
        optimizer="sgd",
        lr=1.5,
        momentum=0.85,
        nesterov=True,
        weight_decay=1.33e-3,
        schedule="triangle",
        label_smoothing=0.2,
        crop_padding=2,
        flip="alternating",
        lookahead=True,
        lookahead_start=0.3,
        lookahead_every=5,
        drop_last=True,
        bf16=True,
        channels_last=True,
    ),
    "narrow_resnet": dict(
        epochs=20,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="onecycle",
        warmup=0.15,
        bf16=True,
        channels_last=True,
    ),
    "preact_resnet18": dict(
        epochs=100,
        batch_size=128,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        warmup=0.0,
        bf16=True,
        channels_last=True,
    ),
}

DEFAULT_MODEL = {"mnist": "small_cnn", "cifar10": "fastnet"}


def default_model_for(dataset: str, image_size: int) -> str:
    """The model ``unbackdoor train`` picks when ``--model`` is not given."""
    if dataset in DEFAULT_MODEL:
        return DEFAULT_MODEL[dataset]
    return "small_cnn" if image_size <= 28 else "fastnet"


def recipe(model_name: str, **overrides: Any) -> TrainConfig:
    """The default :class:`TrainConfig` for ``model_name`` with ``overrides`` (``None`` ignored)."""
    base = from_dict(TrainConfig, _RECIPES.get(model_name, {}))
    given = {k: v for k, v in overrides.items() if v is not None}
    return from_dict(TrainConfig, {**base.__dict__, **given}).validate()
