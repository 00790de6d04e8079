"""The attack registry: ``create_attack(name, **cfg)`` and ``list_attacks()``."""

from __future__ import annotations

from typing import Any

from unbackdoor.attacks.base import Attack
from unbackdoor.registry import Registry
from unbackdoor.utils.config import from_dict

ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: registers an :class:`Attack` subclass under its ``name``."""
    return ATTACKS.register(cls.name)(cls)


def create_attack(name: str, **cfg: Any) -> Attack:
    """Build the attack ``name``; an unknown key or a bad value is an error that names it."""
    return from_dict(ATTACKS.get(name), cfg)


def list_attacks() -> dict[str, str]:
    return ATTACKS.describe()
