"""Make a backdoored model: fit the trigger, poison the training set, train, evaluate, save.

Two regimes: from scratch (the usual), and fine-tuning a pretrained clean artifact on the
poisoned data (``init``), which is what users of pretrained backbones do and where task-vector
defenses such as TBAR expect the backdoor to live.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from unbackdoor.api import (
    TrainedModel,
    _fit,
    _load_splits,
    build_model,
    prepare_out,
)
from unbackdoor.attacks.poison import poison_dataset
from unbackdoor.attacks.policy import LabelPolicy
from unbackdoor.attacks.registry import create_attack
from unbackdoor.attacks.store import AttackRecord, save_attack
from unbackdoor.data import ImageDataset
from unbackdoor.errors import ArtifactError, DataError
from unbackdoor.models import load_model
from unbackdoor.train.recipes import default_model_for, recipe
from unbackdoor.utils.runinfo import resolve_device, seed_everything


def attack_model(
    dataset: str | ImageDataset = "mnist",
    model: str | None = None,
    attack: str = "badnets",
    *,
    test_data: ImageDataset | None = None,
    rate: float | None = None,
    target: int = 0,
    policy: str | None = None,
    cover_rate: float | None = None,
    attack_options: dict[str, Any] | None = None,
    init: str | Path | None = None,
    clean_model: str | Path | None = None,
    epochs: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    train_samples: int | None = None,
    picture: bool = True,
    **train_options: Any,
) -> tuple[TrainedModel, AttackRecord]:
    """Train a backdoored model; with ``out``, also writes ``attack.json`` and ``trigger.png``.

    ``rate``/``policy`` default to the attack's usual values; ``init`` is a clean artifact to
    fine-tune on the poisoned data instead of training from scratch. ``clean_model`` is a clean
    artifact of the victim architecture for attacks whose trigger is fitted to a model
    (label-consistent, TrojanNN); without it one is trained here with the victim's recipe and
    the attack's ``clean_model_options()`` (label-consistent: adversarial training).
    ``attack.json`` records which model it was and the fit's diagnostics (``extra``).
    """
    out_dir = prepare_out(out, overwrite)
    train_data, test_data, dataset_name = _load_splits(dataset, test_data)
    if train_samples is not None:
        train_data = train_data.sample(train_samples, seed)
    trigger = create_attack(attack, seed=seed, **(attack_options or {}))
    label_policy = LabelPolicy(policy or trigger.policy, target, train_data.num_classes)
    rate = trigger.default_rate if rate is None else rate
    seed_everything(seed)
    clean = None
    if init is not None:
        net, manifest = load_model(init)
        if manifest.class_names != train_data.class_names:
            raise ArtifactError(
                f"{init}: its classes {manifest.class_names} differ from the data set's "
                f"{train_data.class_names}"
            )
        name = manifest.spec.name
        clean = net
    else:
        name = model or default_model_for(dataset_name, train_data.input_shape[-1])
        net = build_model(name, train_data)
    if model is not None and model != name:
        raise DataError(f"--model {model} conflicts with the --init model's architecture {name}")
    cfg = recipe(name, epochs=epochs, seed=seed, **train_options)
    if clean_model is not None:
        if not trigger.needs_model or init is not None:
            raise DataError(
                f"clean_model is for attacks fitted to a clean model; {attack!r} "
                + ("takes the --init model" if init is not None else "does not use one")
            )
        clean, given = load_model(clean_model)
        mismatch = [
            f"{what} {a} (victim: {b})"
            for what, a, b in (
                ("architecture", given.spec.name, name),
                (
                    "input shape",
                    (given.spec.in_channels, *given.spec.input_size),
                    tuple(train_data.input_shape),
                ),
                ("classes", given.class_names, train_data.class_names),
            )
            if a != b
        ]
        if mismatch:
            raise ArtifactError(
                f"{clean_model}: not a clean twin of the victim: " + "; ".join(mismatch)
            )
    extra: dict[str, Any] = {"init": str(init) if init else None}
    if trigger.needs_model:  # which clean model the trigger was fitted to
        given = clean_model or init
        extra["clean_model"] = (
            str(given) if given else {"trained_here": trigger.clean_model_options()}
        )
    if trigger.needs_model and clean is None:
        crafting = dataclasses.replace(cfg, **trigger.clean_model_options()).validate()
        clean = _clean_model_for(train_data, test_data, name, seed, crafting)
    device = resolve_device(cfg.device)
    trigger.fit(train_data, clean, target=target, device=device)
    cover = trigger.suggested_cover_rate(rate) if cover_rate is None else cover_rate
    poisoned = poison_dataset(train_data, trigger, label_policy, rate, cover_rate=cover, seed=seed)
    extra["cover_rate"] = cover
    if getattr(trigger, "fit_info", None):
        extra["fit_info"] = trigger.fit_info
    record = AttackRecord(trigger, label_policy, rate, poisoned.poison_indices.tolist(), extra)

    def save_extra(d: Path) -> None:
        save_attack(d, record)
        if picture:
            from unbackdoor.attacks.picture import save_trigger_picture

            pick = test_data.sample(min(4, len(test_data)), seed)
            save_trigger_picture(
                trigger.apply,
                pick.float_images(),
                d / "trigger.png",
                title=f"{trigger.name} (target {target})",
            )

    trained = _fit(
        net,
        name,
        poisoned.data,
        test_data,
        cfg,
        out_dir,
        {
            "dataset": dataset_name,
            "attack": trigger.config(),
            "policy": label_policy.to_dict(),
            "rate": rate,
            "cover_rate": cover,
            "init": str(init) if init else None,
        },
        trigger=trigger.apply,
        attack_labels=label_policy.attack_labels,
        save_extra=save_extra,
    )
    return trained, record


def _clean_model_for(
    train_data: ImageDataset, test_data: ImageDataset, name: str, seed: int, cfg: Any
):
    """A clean model of the victim architecture, for attacks whose trigger needs one."""
    from unbackdoor.api import train_model

    return train_model(
        train_data,
        name,
        test_data=test_data,
        seed=seed,
        **{k: v for k, v in cfg.to_dict().items() if k != "seed"},
    ).model
