"""Label policies: which samples are poisoned and which label they carry.

- ``all_to_one``: samples of every class but the target get the trigger and the target label
  (BadNets, Gu et al. 2017);
- ``all_to_all``: a sample of class y gets label (y + 1) mod C;
- ``clean_label``: only target-class samples are poisoned and labels are untouched (SIG,
  label-consistent): the model learns the trigger as a feature of the target class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unbackdoor.errors import ConfigError

POLICIES = ("all_to_one", "all_to_all", "clean_label")


@dataclass(frozen=True)
class LabelPolicy:
    kind: str = "all_to_one"
    target: int = 0
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ConfigError(f"label policy {self.kind!r} is unknown; expected one of {POLICIES}")
        if self.num_classes < 2:
            raise ConfigError(f"label policy: num_classes must be >= 2, got {self.num_classes}")
        if self.kind != "all_to_all" and not 0 <= self.target < self.num_classes:
            raise ConfigError(
                f"label policy: target={self.target} is not a class of a "
                f"{self.num_classes}-class model (expected 0..{self.num_classes - 1})"
            )

    def attack_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The label the attacker wants for a triggered sample of true label ``y``."""
        if self.kind == "all_to_all":
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.target)

    def eligible(self, y: torch.Tensor) -> torch.Tensor:
        """Which training samples may be poisoned."""
        if self.kind == "all_to_one":
            return y != self.target
        if self.kind == "clean_label":
            return y == self.target
        return torch.ones_like(y, dtype=torch.bool)

    def poisoned_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Training labels of poisoned samples (unchanged for clean-label)."""
        return y.clone() if self.kind == "clean_label" else self.attack_labels(y)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "num_classes": self.num_classes}
