"""Label-consistent backdoor: clean-label poisoning with adversarially perturbed target images
(Turner, Tsipras, Madry, "Label-Consistent Backdoor Attacks", arXiv 1912.02771, 2019).

Only images of the target class are poisoned, and they keep their (correct) label. To make the
model rely on the trigger rather than on their natural features, each poisoned image is first made
hard to classify: an L_inf-bounded PGD perturbation (untargeted, maximising the loss of the true
label) computed against a clean, *adversarially trained* model of the victim architecture, as in
the paper. When the attack trains that model itself, it trains it adversarially at ``crafting_eps``
(default 8/255), with FGSM-RS or, with ``crafting_steps`` > 1, PGD
(:mod:`unbackdoor.train.adversarial`). With the fast net's 12-epoch recipe FGSM-RS overfits
catastrophically (0% accuracy under PGD at 4/255 and 8/255, measured by
``benchmarks/attacks/lc_diagnose.py``); PGD-3 (``crafting_steps=3``) gives a truly robust crafting
model (71.5% clean, 40.5% under PGD-10 at 8/255), yet the CIFAR-10 victim poisoned on 95% of the
target class *still* classified 100% of its perturbed images as the target without the trigger
(class-0 test accuracy 47%, ASR 0.26%), and at 50% of the target class it kept its accuracy but
still fitted every perturbed training image without the trigger (ASR 0.63%): the fast net's short
recipe learns the perturbed images directly (``benchmarks/attacks/cifar10.md``). With a standard
model (``crafting_eps=0``) the perturbations are non-robust features that the victim learns as a
shortcut: measured on CIFAR-10 (fastnet, 16/255), the victim classified 100% of the perturbed
images as the target *without* the trigger, lost half its target-class test accuracy (91% -> 46%),
and the ASR was 0.03%. The trigger is then stamped: the paper's 3x3 black-and-white pattern in all
four corners (``trigger="all_corners"``; ``"bottom_right"`` is the single-corner variant), added
with amplitude ``amplitude`` and clipped (amplitude 1 sets the pixels to black/white; the paper
studies reduced amplitudes such as 16/255 to make the training poison less visible). At test time
the trigger is stamped at full amplitude.

:meth:`LabelConsistent.fit` computes the perturbations for every target-class image of the
training set given to it and stores them, quantised to the uint8 pixel grid, by sample index;
:meth:`poison_images` returns perturbed + stamped images for those indices.

Defaults follow BackdoorBench's CIFAR-10 setting: all-corners trigger, amplitude 1
(``reduced_amplitude: 1``), PGD radius 16/255 (the adversarial data set its LC loader picks by
default; its published crafting script sets 8/255, 100 steps of 1.5/255, against a PGD-trained
ResNet-18 checkpoint), poisoning rate 0.1 of the whole training set, all drawn from the target
class (on CIFAR-10: the whole target class). PGD here: ``steps=10`` of size
``2.5 * eps / steps``, no random start, against the model given to :meth:`fit`.

Cost: one forward and backward pass of that model per PGD step per target-class image, e.g.
about 1 CPU-minute for CIFAR-10's 5,000 target images with the narrow ResNet and 13 with a
PreAct-ResNet-18 (single thread). On MNIST, 16/255 barely moves a small CNN (target-class
accuracy 0.98 -> 0.89) and the backdoor is hardly learned (ASR 0.07 at rate 0.08, 5-epoch tiny
victim; 0.21 with eps 76 = 0.3); some MNIST classes hold under 10% of the images (digit 0:
5,923 of 60,000), so rate 0.1 with such a target is refused there.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError

# (row, col, sign): +1 white, -1 black; negative offsets count from the bottom / right edge.
_CORNER_TOP_LEFT = [
    (0, 0, 1),
    (0, 1, -1),
    (0, 2, -1),
    (1, 0, -1),
    (1, 1, 1),
    (1, 2, -1),
    (2, 0, 1),
    (2, 1, -1),
    (2, 2, 1),
]
_CORNER_BOTTOM_LEFT = [
    (-1, 0, 1),
    (-1, 1, -1),
    (-1, 2, 1),
    (-2, 0, -1),
    (-2, 1, 1),
    (-2, 2, -1),
    (-3, 0, 1),
    (-3, 1, -1),
    (-3, 2, -1),
]
_CORNER_TOP_RIGHT = [
    (0, -1, 1),
    (0, -2, -1),
    (0, -3, -1),
    (1, -1, -1),
    (1, -2, 1),
    (1, -3, -1),
    (2, -1, 1),
    (2, -2, -1),
    (2, -3, 1),
]
_CORNER_BOTTOM_RIGHT = [
    (-1, -1, 1),
    (-1, -2, -1),
    (-1, -3, 1),
    (-2, -1, -1),
    (-2, -2, 1),
    (-2, -3, -1),
    (-3, -1, 1),
    (-3, -2, -1),
    (-3, -3, -1),
]
TRIGGERS = {
    "all_corners": _CORNER_TOP_LEFT
    + _CORNER_BOTTOM_LEFT
    + _CORNER_TOP_RIGHT
    + _CORNER_BOTTOM_RIGHT,
    "bottom_right": _CORNER_BOTTOM_RIGHT,
}


@register_attack
@dataclass
class LabelConsistent(Attack):
    """Clean-label: PGD-perturbed target-class images plus a corner pattern trigger."""

    name: ClassVar[str] = "label_consistent"
    policy: ClassVar[str] = "clean_label"
    default_rate: ClassVar[float] = 0.1
    needs_model: ClassVar[bool] = True
    # crafted on a plain model before these existed
    added_later: ClassVar[dict[str, Any]] = {"crafting_eps": 0.0, "crafting_steps": 1}

    eps: float = 16.0  # L_inf radius, on the 0-255 pixel scale
    steps: int = 10
    step_size: float = 0.0  # on the 0-255 scale; 0: 2.5 * eps / steps
    trigger: str = "all_corners"
    amplitude: float = 1.0  # training trigger amplitude in [0, 1]; the test trigger uses 1
    crafting_eps: float = 8.0  # adversarial-training radius (0-255) of the crafting model; 0: none
    crafting_steps: int = 1  # its attack steps: 1 FGSM-RS, more PGD (see train/adversarial.py)
    batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        self._indices: torch.Tensor | None = None  # sorted sample indices (int64)
        self._deltas: torch.Tensor | None = None  # uint8, delta + 128 on the 0-255 grid
        self.fit_info: dict[str, Any] = {}

    def validate(self) -> None:
        self._require(0 <= self.eps <= 127, "eps", "a radius in [0, 127] on the 0-255 scale")
        self._require(self.steps >= 0, "steps", "an integer >= 0")
        self._require(self.step_size >= 0, "step_size", ">= 0 (0: 2.5 * eps / steps)")
        self._require(self.trigger in TRIGGERS, "trigger", f"one of {sorted(TRIGGERS)}")
        self._require(0 <= self.amplitude <= 1, "amplitude", "a number in [0, 1]")
        self._require(0 <= self.crafting_eps <= 64, "crafting_eps", "a radius in [0, 64] (0-255)")
        self._require(
            isinstance(self.crafting_steps, int) and self.crafting_steps >= 1,
            "crafting_steps",
            "an integer >= 1 (1: FGSM-RS, more: PGD)",
        )
        self._require(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            "batch_size",
            "a positive integer",
        )

    def clean_model_options(self) -> dict[str, Any]:
        """The crafting model is adversarially trained at ``crafting_eps`` (FGSM-RS, or PGD
        with ``crafting_steps`` steps)."""
        if not self.crafting_eps:
            return {}
        steps = {"adv_steps": self.crafting_steps} if self.crafting_steps != 1 else {}
        return {"adv_eps": float(self.crafting_eps), **steps}

    # --- trigger ------------------------------------------------------------------------------
    def stamp(self, x: torch.Tensor, amplitude: float = 1.0) -> torch.Tensor:
        """Add the pattern (+-``amplitude`` at its pixels, every channel) and clip to [0, 1]."""
        h, w = x.shape[-2:]
        if h < 3 or w < 3:
            raise ConfigError(f"attack 'label_consistent': images of {h}x{w} are too small")
        add = torch.zeros(h, w, dtype=x.dtype, device=x.device)
        for r, c, sign in TRIGGERS[self.trigger]:
            add[r % h, c % w] = sign * amplitude
        return (x + add).clamp(0, 1)

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.stamp(x, 1.0)

    def poison_images(self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Perturbed (as computed by :meth:`fit`) and stamped training images."""
        return self.stamp((x + self.perturbation(index).to(x)).clamp(0, 1), self.amplitude)

    def perturbation(self, index: torch.Tensor) -> torch.Tensor:
        """The stored perturbations (float, pixel units / 255) of training samples ``index``."""
        if self._indices is None or self._deltas is None:
            raise ConfigError(
                "attack 'label_consistent': no adversarial perturbations; call "
                "fit(train_data, clean_model, target=...) first"
            )
        idx = torch.as_tensor(index).cpu().long().flatten()
        pos = torch.searchsorted(self._indices, idx).clamp(max=max(0, len(self._indices) - 1))
        found = self._indices.numel() > 0 and bool((self._indices[pos] == idx).all())
        if not found:
            missing = idx[self._indices[pos] != idx] if self._indices.numel() else idx
            raise ConfigError(
                f"attack 'label_consistent': samples {missing[:5].tolist()} have no perturbation; "
                "only the target-class images of the training set given to fit() can be poisoned"
            )
        return (self._deltas[pos].float() - 128.0) / 255.0

    # --- fitting ------------------------------------------------------------------------------
    def fit(
        self,
        data: ImageDataset,
        model: nn.Module | None = None,
        *,
        target: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        """PGD-perturb every image of class ``target`` in ``data`` against ``model``."""
        if model is None:
            raise ConfigError(
                "attack 'label_consistent': fit needs a clean model of the victim architecture "
                "(model=...) to compute the adversarial perturbations"
            )
        if not 0 <= target < data.num_classes:
            raise ConfigError(
                f"attack 'label_consistent': target={target} is not a class of {data.name} "
                f"({data.num_classes} classes)"
            )
        device = torch.device(device)
        net = copy.deepcopy(model).to(device).eval().requires_grad_(False)
        indices = torch.nonzero(data.labels == target).flatten()
        eps = self.eps / 255.0
        alpha = (self.step_size or (2.5 * self.eps / max(1, self.steps))) / 255.0
        deltas = []
        correct = torch.zeros(2)
        for start in range(0, indices.numel(), self.batch_size):
            b = indices[start : start + self.batch_size]
            x0 = data.images[b].to(device).float().div_(255.0)
            y = data.labels[b].to(device)
            x = x0.clone()
            for _ in range(self.steps):
                x.requires_grad_(True)
                loss = F.cross_entropy(net(x), y)
                (grad,) = torch.autograd.grad(loss, x)
                x = x.detach() + alpha * grad.sign()
                x = (x0 + (x - x0).clamp(-eps, eps)).clamp(0, 1)
            q = (x.detach() * 255.0).round() - data.images[b].to(device).float()
            q = q.clamp(-round(self.eps), round(self.eps))
            deltas.append((q + 128).to(torch.uint8).cpu())
            with torch.no_grad():
                x_q = (x0 + q / 255.0).clamp(0, 1)
                correct += torch.tensor(
                    [float((net(x0).argmax(1) == y).sum()), float((net(x_q).argmax(1) == y).sum())]
                )
        self._indices = indices.clone()
        self._deltas = (
            torch.cat(deltas) if deltas else torch.zeros(0, *data.input_shape, dtype=torch.uint8)
        )
        n = max(1, indices.numel())
        self.fit_info = {
            "num_perturbed": int(indices.numel()),
            "clean_acc_target_class": float(correct[0]) / n,
            "adv_acc_target_class": float(correct[1]) / n,
        }
        if indices.numel() and self.fit_info["clean_acc_target_class"] < 0.5:
            warnings.warn(
                f"attack 'label_consistent': the crafting model recognises only "
                f"{self.fit_info['clean_acc_target_class']:.0%} of the target-class images; "
                "perturbations against a model that does not know the class do not make its "
                "images hard (an adversarially trained model that collapsed?)",
                stacklevel=2,
            )

    # --- storage ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        if self._indices is None or self._deltas is None:
            return {}
        return {"indices": self._indices.clone(), "deltas": self._deltas.clone()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        idx, deltas = tensors.get("indices"), tensors.get("deltas")
        if idx is None or deltas is None:
            raise ConfigError("attack 'label_consistent': tensors need 'indices' and 'deltas'")
        if deltas.dtype != torch.uint8 or deltas.ndim != 4 or deltas.shape[0] != idx.numel():
            raise ConfigError(
                f"attack 'label_consistent': deltas must be uint8 N x C x H x W with one row per "
                f"index; got {deltas.dtype} {tuple(deltas.shape)} for {idx.numel()} indices"
            )
        order = torch.argsort(idx.long())
        self._indices = idx.long()[order].clone()
        self._deltas = deltas[order].clone()
