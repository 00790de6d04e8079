"""``attack.json`` + ``attack.safetensors``: the full description of an applied attack.

The JSON holds the attack's name and configuration, the label policy, the poisoning rate, the
seed and the poison indices; the safetensors file holds any tensor the configuration cannot
rebuild (a supplied pattern, a trained generator, an optimised patch). Together they rebuild the
exact trigger, so ``unbackdoor evaluate`` can measure ASR on any artifact that carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.policy import LabelPolicy
from unbackdoor.attacks.registry import create_attack
from unbackdoor.errors import ArtifactError, ConfigError
from unbackdoor.utils.io import atomic_write, atomic_write_json, read_json

ATTACK_JSON = "attack.json"
ATTACK_TENSORS = "attack.safetensors"


@dataclass
class AttackRecord:
    """An attack as applied to a model: trigger, label policy, rate and poisoned samples."""

    attack: Attack
    policy: LabelPolicy
    rate: float
    poison_indices: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def trigger(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.attack.apply(x, index)

    def attack_labels(self, y: torch.Tensor) -> torch.Tensor:
        return self.policy.attack_labels(y)


def has_attack(directory: str | Path) -> bool:
    return (Path(directory) / ATTACK_JSON).is_file()


def save_attack(directory: str | Path, record: AttackRecord) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in record.attack.tensors().items()}
    if tensors:
        atomic_write(directory / ATTACK_TENSORS, lambda p: save_file(tensors, str(p)))
    atomic_write_json(
        directory / ATTACK_JSON,
        {
            "attack": record.attack.config(),
            "policy": record.policy.to_dict(),
            "rate": record.rate,
            "num_poisoned": len(record.poison_indices),
            "has_tensors": bool(tensors),
            "extra": record.extra,
            "poison_indices": list(map(int, record.poison_indices)),
        },
    )


def load_attack(directory: str | Path) -> AttackRecord:
    """Rebuild the exact trigger and label policy recorded in ``directory``."""
    directory = Path(directory)
    path = directory / ATTACK_JSON
    d = read_json(path)
    try:
        cfg = dict(d["attack"])
        name = cfg.pop("name")
        policy = LabelPolicy(**d["policy"])
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: missing or malformed field ({e!r})") from None
    try:
        attack = create_attack(name, **cfg)
    except ConfigError as e:
        raise ArtifactError(f"{path}: {e}") from None
    if d.get("has_tensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        tpath = directory / ATTACK_TENSORS
        if not tpath.is_file():
            raise ArtifactError(f"{tpath}: missing (the attack's trigger tensors)")
        try:
            attack.load_tensors(load_file(str(tpath)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{tpath}: corrupt trigger tensors ({e})") from None
    return AttackRecord(
        attack,
        policy,
        float(d.get("rate", 0.0)),
        list(d.get("poison_indices", [])),
        dict(d.get("extra", {})),
    )


def copy_attack(src: str | Path, dst: str | Path) -> bool:
    """Carry ``attack.json`` (and its tensors) from one artifact to another, unchanged."""
    src, dst = Path(src), Path(dst)
    copied = False
    for name in (ATTACK_JSON, ATTACK_TENSORS):
        if (src / name).is_file():
            data = (src / name).read_bytes()
            atomic_write(dst / name, lambda p, data=data: p.write_bytes(data))
            copied = True
    return copied
