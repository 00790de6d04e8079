"""The trigger interface every attack implements.

A trigger is a pure, seeded function of a batch in [0, 1] pixel space: ``apply(x, index) -> x'``.
Which samples are poisoned and which labels they get is the label policy's job
(:mod:`unbackdoor.attacks.policy`), not the trigger's. An attack whose trigger must be learned
(a generator, an optimised patch, adversarial perturbations) does so in :meth:`Attack.fit`.

Everything needed to rebuild the exact trigger is :meth:`Attack.config` (JSON) plus
:meth:`Attack.tensors` (saved with safetensors), see :mod:`unbackdoor.attacks.store`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError
from unbackdoor.utils.config import check_types


@dataclasses.dataclass
class Attack:
    """Base class: subclasses are dataclasses whose fields are the attack's configuration.

    Class attributes: ``name`` (registry name), ``policy`` (the default label policy,
    ``"all_to_one"`` or ``"clean_label"``), ``default_rate`` (its usual poisoning rate),
    ``needs_model`` (``fit`` wants a clean model of the victim architecture), ``fit_resolves``
    (settings whose default means "decide when fitted"; the config records the decision),
    ``added_later`` (settings older configs lack, with the value they implied).
    """

    name: ClassVar[str] = "attack"
    policy: ClassVar[str] = "all_to_one"
    default_rate: ClassVar[float] = 0.1
    needs_model: ClassVar[bool] = False
    fit_resolves: ClassVar[tuple[str, ...]] = ()
    #: settings added after models were trained, at the value that reproduces those models
    added_later: ClassVar[dict[str, Any]] = {}

    seed: int = 0

    def __post_init__(self) -> None:
        check_types(self, f"attack {self.name!r}")
        self.validate()

    # --- to implement -------------------------------------------------------------------------
    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Stamp the trigger on a float batch ``x`` (N x C x H x W in [0, 1]); same shape/range."""
        raise NotImplementedError

    def validate(self) -> None:
        """Check the configuration; raise :class:`ConfigError` naming a bad field."""

    # --- optional hooks -----------------------------------------------------------------------
    def clean_model_options(self) -> dict[str, Any]:
        """Training options (``TrainConfig`` fields) for the clean model that ``fit`` wants when
        one is trained for it, e.g. adversarial training; the victim's recipe otherwise."""
        return {}

    def fit(
        self,
        data: ImageDataset,
        model: nn.Module | None = None,
        *,
        target: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        """Learn whatever the trigger needs from the attacker's data (default: nothing)."""

    def poison_images(self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training-time poisoned images (default: :meth:`apply`).

        Clean-label attacks that perturb training images differently from test images (e.g.
        label-consistent's adversarial perturbation) override this.
        """
        return self.apply(x, index)

    def cover_images(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        """Images kept with their true labels to make the backdoor specific (WaNet's noise mode,
        input-aware's cross triggers); ``None`` when the attack has no such samples."""
        return None

    def suggested_cover_rate(self, rate: float) -> float:
        """The cover-sample rate the attack's paper uses at poison ``rate`` (0: no cover)."""
        return 0.0

    def tensors(self) -> dict[str, torch.Tensor]:
        """Learned or generated tensors that the JSON config alone cannot rebuild."""
        return {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`tensors` returned."""

    # --- shared -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The JSON-able configuration (the dataclass fields) and the attack's name."""
        cfg = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}
        return {"name": self.name, **cfg}

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) * 1_000_003 + offset)

    def _require(self, cond: bool, field: str, expected: str) -> None:
        if not cond:
            raise ConfigError(
                f"attack {self.name!r}: {field}={getattr(self, field)!r} is invalid; "
                f"expected {expected}"
            )

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.apply(x, index)


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(i) for i in v]
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v
