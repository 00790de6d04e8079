"""CLIP artifacts end to end, for the CLI: attack, evaluate, unlearn.

The same commands as for classifiers (``unbackdoor attack --clip ...``, ``evaluate``,
``unlearn``) call these functions when the model is a CLIP model. The data set a CLIP artifact
was poisoned on is recorded in ``clip.json`` (``extra.dataset``); images of any size are resized
inside the model. Defenses run through :func:`unbackdoor.unlearn.unlearn`, like every method.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from unbackdoor.attacks.registry import ATTACKS, create_attack
from unbackdoor.attacks.store import copy_attack, has_attack, load_attack
from unbackdoor.clip.attacks.pipeline import backdoor_clip
from unbackdoor.clip.data.pairs import caption_pairs
from unbackdoor.clip.eval.metrics import retrieval_recall, zero_shot_metrics
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.model.store import ClipManifest, load_clip, save_clip
from unbackdoor.clip.model.tiny import TinyClip
from unbackdoor.clip.train.contrastive import finetune_contrastive
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.registry import load_dataset
from unbackdoor.errors import ArtifactError, ConfigError, DataError
from unbackdoor.eval.retune import RetuneConfig, RetuneResult
from unbackdoor.train import TrainConfig
from unbackdoor.utils.io import atomic_write_json
from unbackdoor.utils.runinfo import resolve_device


def clip_train_config(epochs: int, lr: float, seed: int, device: str) -> TrainConfig:
    """The contrastive fine-tuning recipe: AdamW, cosine decay, batch 64, no augmentation."""
    return TrainConfig(
        epochs=epochs,
        batch_size=64,
        optimizer="adamw",
        lr=lr,
        weight_decay=0.1,
        schedule="cosine",
        warmup=0.0,
        augment=False,
        seed=seed,
        device=device,
    )


def _dataset_name(man: ClipManifest, dataset: str | None) -> str:
    name = dataset or man.extra.get("dataset")
    if not name:
        raise DataError("the CLIP artifact names no data set: pass --dataset / --clean-data")
    return str(name)


def _load(name: str, split: str, man: ClipManifest | None) -> ImageDataset:
    names = man.class_names if man is not None and man.class_names else None
    return load_dataset(name, split, class_names=names)


def attack_clip(
    source: str,
    dataset: str,
    attack_name: str,
    *,
    out: str | Path,
    rate: float | None = None,
    target: int = 0,
    target_caption: str | None = None,
    attack_options: dict[str, Any] | None = None,
    epochs: int = 2,
    lr: float = 1e-4,
    train_samples: int | None = None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Backdoor the CLIP model ``source`` (a path :func:`load_clip` reads, or ``"tiny"``).

    ``"tiny"`` first trains a :class:`TinyClip` on clean pairs of ``dataset`` for ``epochs``.
    ``target_caption`` captions the poisoned pairs and, for an attack optimised towards a text
    (BadCLIP), is that text. Returns the zero-shot metrics of the saved backdoored artifact.
    A finished model in ``out`` is refused unless ``overwrite``.
    """
    from unbackdoor.api import prepare_out

    dev = resolve_device(device)
    options = dict(attack_options or {})
    fields = {f.name for f in dataclasses.fields(ATTACKS.get(attack_name))}
    if target_caption is not None and "target_caption" in fields:
        given = options.setdefault("target_caption", target_caption)
        if given != target_caption:
            raise ConfigError(
                f"attack {attack_name!r}: target_caption given twice with different texts "
                f"({given!r} as an option, {target_caption!r})"
            )
    attack = create_attack(attack_name, seed=seed, **options)
    train = load_dataset(dataset, "train")
    test = load_dataset(dataset, "test", class_names=train.class_names)
    if train_samples is not None:
        train = train.sample(train_samples, seed)
    loaded = None if source == "tiny" else load_clip(source, device=str(dev))[0]
    prepare_out(out, overwrite)  # after the inputs are checked: no empty folder left
    cfg = clip_train_config(epochs, lr, seed, str(dev))
    if loaded is None:
        model: ClipModel = TinyClip(
            image_size=train.images.shape[-1], in_channels=train.images.shape[1]
        ).to(dev)
        finetune_contrastive(model, caption_pairs(train, seed=seed), cfg, desc="clip: clean")
    else:
        model = loaded
    made = backdoor_clip(
        model,
        train,
        attack,
        target=target,
        rate=attack.default_rate if rate is None else rate,
        config=cfg,
        target_caption=target_caption,
        seed=seed,
        out=out,
        extra={"dataset": dataset, "source": source, "seed": seed},
    )
    m = zero_shot_metrics(made.model, test, trigger=attack, target=target)
    result = {**m.to_dict(), "poisoned": len(made.record.poison_indices), "attack": attack.name}
    atomic_write_json(Path(out) / "metrics.json", result)
    return result


def evaluate_clip_artifact(
    directory: str | Path,
    dataset: str | None = None,
    split: str = "test",
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """Zero-shot CA (and ASR/RA with the artifact's attack) and retrieval recall@1/5/10,
    with the model on ``device`` (``"auto"``: CUDA when present)."""
    model, man = load_clip(directory, device=str(resolve_device(device)))
    data = _load(_dataset_name(man, dataset), split, man)
    templates = man.templates or None
    if has_attack(directory):
        rec = load_attack(directory)
        m = zero_shot_metrics(
            model, data, templates=templates, trigger=rec.trigger, target=rec.policy.target
        )
    else:
        m = zero_shot_metrics(model, data, templates=templates)
    r = retrieval_recall(model, caption_pairs(data, seed=1))
    return {**m.to_dict(), "retrieval": r.to_dict(), "kind": man.kind}


def retune_clip_artifact(
    directory: str | Path, dataset: str | None = None, config: RetuneConfig | None = None
) -> RetuneResult:
    """The re-tuning attack on the CLIP model in ``directory`` with its own trigger."""
    from unbackdoor.clip.eval.retune import retune_clip

    if not has_attack(directory):
        raise ArtifactError(f"{directory}: no attack.json, so no trigger to re-tune with")
    model, man = load_clip(directory)
    name = _dataset_name(man, dataset)
    test = _load(name, "test", man)
    pool = _load(name, "train", man)
    record = load_attack(directory)
    return retune_clip(model, pool, test, record, config, templates=man.templates or None)


def unlearn_clip_artifact(
    directory: str | Path,
    method: str,
    *,
    out: str | Path | None = None,
    clean_data: str | None = None,
    clean_samples: int | None = None,
    clean_fraction: float = 0.05,
    seed: int = 0,
    known_attack: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    **config: Any,
) -> tuple[ClipModel, Any]:
    """Purify the CLIP model in ``directory`` with a CLIP defense; write it to ``out``."""
    from unbackdoor.api import prepare_out
    from unbackdoor.clip.defenses import CLIP_DEFENSES
    from unbackdoor.defenses.registry import DEFENSES
    from unbackdoor.unlearn import checkpoint_into, defender_subset, save_report_images, unlearn

    DEFENSES.get(method)  # an unknown name is an error that lists the known ones
    if method not in CLIP_DEFENSES:
        raise ConfigError(
            f"defense {method!r} works on classifiers; for CLIP models use one of "
            f"{', '.join(CLIP_DEFENSES)}"
        )
    model, man = load_clip(directory)
    name = _dataset_name(man, clean_data)
    data = _load(name, "train", man)
    data = defender_subset(data, clean_data, clean_samples, clean_fraction, seed)
    record = load_attack(directory) if known_attack else None
    takes = {f.name for f in dataclasses.fields(DEFENSES.get(method))}
    if man.templates and "templates" in takes and config.get("templates") is None:
        config["templates"] = list(man.templates)  # the head the model is evaluated with
    out_dir = prepare_out(out, overwrite)  # after the inputs are checked: no empty folder left
    ckpt = checkpoint_into(out_dir, method, config)  # clip-bibau resumes there
    purified, report = unlearn(
        model, data, method, seed=seed, known_attack=record, device=device, **config
    )
    if out_dir is not None:
        out = out_dir
        save_clip(
            purified,
            out,
            class_names=man.class_names or data.class_names,
            templates=man.templates,
            # a raw source (HF directory, OpenAI weights) names no data set: record the one used
            extra={
                "dataset": name,
                **man.extra,
                "unlearned_from": str(directory),
                "method": method,
            },
        )
        copy_attack(directory, out)
        save_report_images(report, out)
        atomic_write_json(
            out / "report.json",
            json.loads(json.dumps({**report.to_dict(), "source": str(directory)}, default=str)),
        )
        if ckpt is not None:
            shutil.rmtree(ckpt, ignore_errors=True)
    return purified, report
