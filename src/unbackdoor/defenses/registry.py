"""The defense registry: ``create_defense(name, **cfg)`` and ``list_defenses()``."""

from __future__ import annotations

from typing import Any

from unbackdoor.defenses.base import Defense
from unbackdoor.registry import Registry
from unbackdoor.utils.config import from_dict

DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: registers a :class:`Defense` subclass under its ``name``."""
    return DEFENSES.register(cls.name)(cls)


def create_defense(name: str, **cfg: Any) -> Defense:
    """Build the defense ``name``; unknown keys and bad values are errors that name them."""
    return from_dict(DEFENSES.get(name), cfg)


def list_defenses() -> dict[str, str]:
    return DEFENSES.describe()
