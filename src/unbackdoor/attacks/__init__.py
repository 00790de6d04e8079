"""Backdoor attacks: triggers (a registry of seeded, pure functions of a batch), label policies,
poisoned data sets, the stored attack description, and the zoo of backdoored models."""

from unbackdoor.attacks import adaptive_blend as _adaptive_blend  # noqa: F401  (registration)
from unbackdoor.attacks import badnets as _badnets  # noqa: F401  (registration)
from unbackdoor.attacks import blended as _blended  # noqa: F401  (registration)
from unbackdoor.attacks import bpp as _bpp  # noqa: F401  (registration)
from unbackdoor.attacks import input_aware as _input_aware  # noqa: F401  (registration)
from unbackdoor.attacks import label_consistent as _label_consistent  # noqa: F401  (registration)
from unbackdoor.attacks import lf as _lf  # noqa: F401  (registration)
from unbackdoor.attacks import sig as _sig  # noqa: F401  (registration)
from unbackdoor.attacks import trojannn as _trojannn  # noqa: F401  (registration)
from unbackdoor.attacks import wanet as _wanet  # noqa: F401  (registration)
from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.poison import PoisonedDataset, poison_dataset
from unbackdoor.attacks.policy import LabelPolicy
from unbackdoor.attacks.registry import ATTACKS, create_attack, list_attacks, register_attack
from unbackdoor.attacks.store import AttackRecord, has_attack, load_attack, save_attack

__all__ = [
    "Attack",
    "AttackRecord",
    "ATTACKS",
    "LabelPolicy",
    "PoisonedDataset",
    "create_attack",
    "list_attacks",
    "register_attack",
    "poison_dataset",
    "save_attack",
    "load_attack",
    "has_attack",
]
