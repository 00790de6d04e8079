"""The re-tuning attack for CLIP models: does a removed backdoor come back?

The classifier version (:mod:`unbackdoor.eval.retune`, after Min et al., NeurIPS 2024) fine-tunes
a copy of the purified model on a few samples of which a small share carry the model's own
trigger. For a CLIP model the samples are image-caption pairs: ``samples`` training images with
captions from their labels, ``poison_rate`` of them stamped and captioned with the target class
(:func:`unbackdoor.clip.data.poison_pairs`, with the attack's own target caption), fine-tuned
with the contrastive loss (:func:`unbackdoor.clip.train.finetune_contrastive`, the project's one
training loop) under :class:`~unbackdoor.eval.retune.RetuneConfig`'s budget. Zero-shot CA and
ASR are measured before and after; run it on a never-backdoored model for the floor.

The learning rate defaults to :data:`CLIP_RETUNE_LR`, ten times below the classifier recipe's:
on the offline CLIP model the classifier recipe (Adam 5e-4) erodes an undefended BadNets
backdoor from 56% to 16% ASR by itself, so a purified model's low RA-ASR would mean nothing;
at 5e-5 the undefended model keeps 49% and the never-backdoored one stays at 5.2%
(``benchmarks/clip/results.notes.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from unbackdoor.attacks.store import AttackRecord
from unbackdoor.clip.data.poison import poison_pairs
from unbackdoor.clip.eval.metrics import zero_shot_metrics
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.train.contrastive import finetune_contrastive
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError
from unbackdoor.eval.metrics import Metrics
from unbackdoor.eval.retune import RetuneConfig, RetuneResult

#: Adam learning rate of the CLIP re-tuning attack (calibrated in ``benchmarks/clip``).
CLIP_RETUNE_LR = 5e-5


def clip_retune_config(**overrides: Any) -> RetuneConfig:
    """:class:`RetuneConfig` with the CLIP learning rate; ``overrides`` replace any field."""
    return RetuneConfig(**{"lr": CLIP_RETUNE_LR, **overrides})


def retune_clip(
    model: ClipModel,
    pool: ImageDataset,
    test: ImageDataset,
    attack: AttackRecord,
    config: RetuneConfig | None = None,
    *,
    templates: Sequence[str] | None = None,
) -> RetuneResult:
    """Fine-tune a copy of ``model`` on pairs from ``pool``, a few poisoned; zero-shot ASR.

    ``config=None`` is :func:`clip_retune_config` (the CLIP learning rate, the rest as for
    classifiers).
    """
    cfg = (config or clip_retune_config()).validate()
    if attack.policy.kind != "all_to_one":
        raise ConfigError(
            f"the CLIP re-tuning attack needs an all-to-one attack, got {attack.policy.kind}"
        )
    target = int(attack.policy.target)
    subset = pool.sample(min(cfg.samples, len(pool)), cfg.seed + 104_729)
    pairs = poison_pairs(
        subset,
        attack.attack,
        target=target,
        rate=cfg.poison_rate,
        target_caption=attack.extra.get("target_caption"),
        seed=cfg.seed,
    )
    victim = copy.deepcopy(model)

    def measure() -> Metrics:
        return zero_shot_metrics(
            victim, test, templates=templates, trigger=attack.trigger, target=target
        )

    before = measure()
    finetune_contrastive(victim, pairs.data, cfg.train_config(augment=False), desc="clip: re-tune")
    victim.eval()
    after = measure()
    steps = cfg.epochs * -(-len(pairs.data) // cfg.batch_size)
    curve = [
        {"step": 0, "asr": before.asr, "clean_acc": before.clean_acc},
        {"step": steps, "asr": after.asr, "clean_acc": after.clean_acc},
    ]
    return RetuneResult(
        before, after, curve, {**cfg.__dict__, "poisoned": int(pairs.is_poisoned.sum())}
    )
