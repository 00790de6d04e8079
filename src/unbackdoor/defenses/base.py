"""The shape every defense has: a typed config, ``run(model, clean, val)``, and a registry name.

A defense gets a *copy* of the suspect model, the defender's clean training samples and a
held-out part of them (``val``) for any choice it makes; it never sees test data. It returns the
purified model and its diagnostics (the trigger it found, the target it suspects, curves).
Adding a method is one file and one ``@register_defense``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError
from unbackdoor.utils.config import check_types, without_added_later


@dataclass
class DefenseOutput:
    """What ``Defense.run`` returns."""

    model: nn.Module
    diagnostics: dict[str, Any] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> C x H x W in [0, 1]
    suspected_target: int | None = None
    backdoor_found: bool | None = None
    anomaly_score: float | None = None


@dataclass
class Defense:
    """Base class: subclasses are dataclasses whose fields are the method's hyperparameters."""

    name: ClassVar[str] = "defense"
    known_attack_capable: ClassVar[bool] = False
    #: rough compute per clean sample relative to fine-tuning (from the cpu grid's defense
    #: times); the grid runner starts costly cells first so that they do not set its end.
    #: It changes no result.
    relative_cost: ClassVar[float] = 1.0
    #: options added after results were stored, at the value that reproduces those results
    #: (left out of the comparisons that decide whether a stored result is stale)
    added_later: ClassVar[dict[str, Any]] = {}

    seed: int = 0
    device: str | torch.device = "auto"

    def __post_init__(self) -> None:
        check_types(self, f"defense {self.name!r}")
        self.validate()

    def validate(self) -> None:
        """Check the config; raise :class:`ConfigError` naming a bad field."""

    def run(
        self, model: nn.Module, clean: ImageDataset, val: ImageDataset, *, known_attack: Any = None
    ) -> DefenseOutput:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init},
        }

    def comparable_config(self) -> dict[str, Any]:
        """:meth:`config` as stored results and checkpoints are compared with it (without the
        options added later while they hold their old value)."""
        return without_added_later(self.config(), self.added_later)

    def _require(self, cond: bool, key: str, expected: str) -> None:
        if not cond:
            raise ConfigError(
                f"defense {self.name!r}: {key}={getattr(self, key)!r} is invalid; "
                f"expected {expected}"
            )
