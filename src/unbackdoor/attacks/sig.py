"""SIG: a clean-label backdoor with a superimposed sinusoidal signal (Barni, Kallas, Tondi,
"A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning", IEEE ICIP
2019, arXiv 1902.11237).

The trigger is the horizontal sinusoid ``v(i, j) = delta * sin(2 pi j f / m)`` (``j`` the column,
``m`` the image width), added to every row and every channel, then clipped to [0, 1]. Only
target-class training samples are corrupted and their labels are kept (``policy =
"clean_label"``): the network learns the signal as a feature of the target class, and any input
carrying it at test time goes to that class.

Defaults:

- ``frequency = 6`` (the paper's and BackdoorBench's ``f``);
- ``delta_train = delta_test = 40/255``: BackdoorBench's CIFAR-10 setting (``sig_delta: 40`` on
  the 0-255 scale, the same transform for the poisoned training set and the test set). The paper
  corrupts its training samples with the weaker ``delta = 20`` (0-255 scale) in the sinusoid
  experiments and treats the test-time strength separately (a stronger test signal raises the
  success rate); ``delta_train`` / ``delta_test`` give that split (training images use
  :meth:`SIG.poison_images`, i.e. ``delta_train``; :meth:`SIG.apply` is the test trigger);
- ``default_rate = 0.08`` of the *whole* training set, drawn from the target class only. On
  balanced 10-class data that is 80% of the target class. BackdoorBench's 10% (its ratio is over
  all samples) is the entire target class of CIFAR-10 and is infeasible on MNIST (the smallest
  class holds 9.0% of the training set); the paper corrupts only part of the target class. 0.08
  stays close to BackdoorBench's strength while remaining feasible on MNIST and CIFAR-10. The rate
  can never exceed the target class's share of the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@register_attack
@dataclass
class SIG(Attack):
    """SIG: clean-label horizontal sinusoid (delta 40/255, f 6), target-class samples only."""

    name: ClassVar[str] = "sig"
    policy: ClassVar[str] = "clean_label"
    default_rate: ClassVar[float] = 0.08

    delta_train: float = 40 / 255
    delta_test: float = 40 / 255
    frequency: float = 6.0

    def validate(self) -> None:
        for key in ("delta_train", "delta_test"):
            v = getattr(self, key)
            self._require(
                _is_number(v) and 0.0 < v <= 1.0,
                key,
                "a number in (0, 1] (the amplitude in [0, 1] pixel units)",
            )
        self._require(
            _is_number(self.frequency) and self.frequency > 0,
            "frequency",
            "a positive number of periods across the image width",
        )

    def signal(self, width: int, delta: float) -> torch.Tensor:
        """The 1-D signal ``delta * sin(2 pi j f / m)`` over the ``width`` columns."""
        j = torch.arange(width, dtype=torch.float64)
        return (delta * torch.sin(2 * math.pi * j * float(self.frequency) / width)).float()

    def stamp(self, x: torch.Tensor, delta: float) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"attack 'sig': expected a float N x C x H x W batch, got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}"
            )
        v = self.signal(x.shape[-1], delta).to(device=x.device, dtype=x.dtype)
        return (x + v.view(1, 1, 1, -1)).clamp(0.0, 1.0)

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.stamp(x, float(self.delta_test))

    def poison_images(self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.stamp(x, float(self.delta_train))
