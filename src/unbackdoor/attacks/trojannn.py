"""TrojanNN: a patch trigger optimised to excite chosen internal neurons (Liu, Ma, Aafer, Lee,
Zhai, Wang, Zhang, "Trojaning Attack on Neural Networks", NDSS 2018).

Trigger generation follows the paper: pick a layer of a clean model, select the ``num_neurons``
neurons with the largest summed absolute connection weights to the next layer, and optimise the
pixel values inside the trigger mask by gradient descent so that those neurons reach a high
``target_value``. The victim is then poisoned all-to-one with the optimised patch (the pixels
inside the mask are replaced).

Defaults follow BackdoorBench's TrojanNN config where it has one: the neurons feeding the last
linear layer (``selected_layer_name: linear``), 2 neurons, target value 100. The mask is a square
in the bottom-right corner, ``size=8`` pixels (6-8% of a 28-32 px image, within the paper's
4-10% trigger sizes; BackdoorBench uses an Apple-logo mask image, which we do not ship).
``steps=500`` Adam steps (lr 0.05, the patch clamped to [0, 1]) from a seeded uniform random
patch (BackdoorBench: 1000 signed steps); it stops early when the loss is below ``tolerance``.

Deviations: the paper optimises the trigger on an otherwise blank input (``canvas="blank"``).
With ReLU networks the selected neurons are often exactly zero on a black image, which leaves
no gradient (we measured this on MNIST), so by default (``canvas="data"``) the patch is
optimised stamped on ``canvas_size`` clean images of the attacker's data, averaging the loss.
The paper also reverse-engineers training data and retrains part of the model; here, as in
BackdoorBench, the victim is trained (or fine-tuned, with ``init``) on the poisoned data set.

:meth:`TrojanNN.apply` needs the optimised patch: call :meth:`fit` first (or load a saved attack);
without it, it raises a :class:`ConfigError` rather than stamping an unoptimised patch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from unbackdoor.attacks.badnets import POSITIONS
from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import ConfigError


@register_attack
@dataclass
class TrojanNN(Attack):
    """Square patch whose pixels are optimised to drive selected neurons of a clean model."""

    name: ClassVar[str] = "trojannn"
    policy: ClassVar[str] = "all_to_one"
    default_rate: ClassVar[float] = 0.1
    needs_model: ClassVar[bool] = True

    size: int = 8
    position: str = "bottom_right"
    margin: int = 0
    layer: str = ""  # the module the neurons feed; "": the last nn.Linear (penultimate features)
    num_neurons: int = 2
    target_value: float = 100.0
    canvas: str = "data"  # optimise on stamped clean images; "blank": on a black image (paper)
    canvas_size: int = 16
    steps: int = 500
    lr: float = 0.05
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        self._patch: torch.Tensor | None = None  # C x size x size in [0, 1]
        self._neurons: torch.Tensor | None = None
        self.fit_info: dict[str, Any] = {}

    def validate(self) -> None:
        self._require(self.size >= 1, "size", "a positive integer")
        self._require(self.position in POSITIONS, "position", f"one of {sorted(POSITIONS)}")
        self._require(
            isinstance(self.margin, int) and self.margin >= 0, "margin", "an integer >= 0"
        )
        self._require(
            isinstance(self.num_neurons, int) and self.num_neurons >= 1,
            "num_neurons",
            "a positive integer",
        )
        self._require(self.target_value > 0, "target_value", "a positive activation value")
        self._require(self.canvas in ("data", "blank"), "canvas", "'data' or 'blank'")
        self._require(
            isinstance(self.canvas_size, int) and self.canvas_size >= 1,
            "canvas_size",
            "a positive integer",
        )
        self._require(self.steps >= 1, "steps", "an integer >= 1")
        self._require(self.lr > 0, "lr", "a positive learning rate")
        self._require(self.tolerance >= 0, "tolerance", ">= 0")

    # --- trigger ------------------------------------------------------------------------------
    @property
    def patch(self) -> torch.Tensor:
        if self._patch is None:
            raise ConfigError(
                "attack 'trojannn': the trigger patch is not optimised yet; call "
                "fit(data, clean_model, target=...) first (or load a saved attack with its tensors)"
            )
        return self._patch

    def _place(self, h: int, w: int) -> tuple[int, int]:
        if self.size + self.margin > min(h, w):
            raise ConfigError(f"attack 'trojannn': size={self.size} does not fit {h}x{w} images")
        return POSITIONS[self.position](h, w, self.size, self.margin)

    def stamp(self, x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        if patch.shape[0] != c:
            raise ConfigError(
                f"attack 'trojannn': the patch has {patch.shape[0]} channels, the images {c}"
            )
        r, col = self._place(h, w)
        mask = torch.zeros(1, 1, h, w, dtype=x.dtype, device=x.device)
        mask[..., r : r + self.size, col : col + self.size] = 1
        canvas = torch.zeros(1, c, h, w, dtype=patch.dtype, device=x.device)
        canvas[..., r : r + self.size, col : col + self.size] = patch.to(x.device)
        return x * (1 - mask) + canvas.to(x.dtype) * mask

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.stamp(x, self.patch)

    # --- fitting ------------------------------------------------------------------------------
    def _target_module(self, net: nn.Module) -> tuple[str, nn.Module]:
        modules = dict(net.named_modules())
        if self.layer:
            if self.layer not in modules:
                raise ConfigError(
                    f"attack 'trojannn': layer={self.layer!r} is not a module of the model; "
                    f"some names: {[n for n in modules if n][:8]}"
                )
            mod = modules[self.layer]
            if not isinstance(mod, (nn.Linear, nn.Conv2d)):
                raise ConfigError(
                    f"attack 'trojannn': layer={self.layer!r} is a {type(mod).__name__}; "
                    "expected a Linear or Conv2d layer (the one the selected neurons feed)"
                )
            return self.layer, mod
        linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError("attack 'trojannn': the model has no nn.Linear; set layer=...")
        return linears[-1]

    def select_neurons(self, module: nn.Module) -> torch.Tensor:
        """The inputs of ``module`` with the largest summed |weight| into it."""
        weight = module.weight.detach().abs()
        score = weight.sum(0) if weight.ndim == 2 else weight.sum(dim=(0, 2, 3))
        k = min(self.num_neurons, score.numel())
        return torch.argsort(score, descending=True, stable=True)[:k]

    def fit(
        self,
        data: ImageDataset,
        model: nn.Module | None = None,
        *,
        target: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        """Optimise the patch so the selected neurons of ``model`` reach ``target_value``."""
        if model is None:
            raise ConfigError(
                "attack 'trojannn': fit needs a clean model (model=...) whose neurons the trigger "
                "is optimised to excite"
            )
        c, h, w = data.input_shape
        self._place(h, w)
        device = torch.device(device)
        net = copy.deepcopy(model).to(device).eval().requires_grad_(False)
        layer_name, module = self._target_module(net)
        neurons = self.select_neurons(module).to(device)
        captured: dict[str, torch.Tensor] = {}

        def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            captured["x"] = inputs[0]

        handle = module.register_forward_pre_hook(hook)

        def activations(x: torch.Tensor) -> torch.Tensor:
            net(x)
            a = captured["x"].flatten(1) if isinstance(module, nn.Linear) else captured["x"]
            a = a[:, neurons]
            return a if a.ndim == 2 else a.mean(dim=(2, 3))

        try:
            gen = self.generator()
            init = torch.rand(c, self.size, self.size, generator=gen)
            patch = init.to(device).requires_grad_(True)
            opt = torch.optim.Adam([patch], lr=self.lr)
            blank = torch.zeros(1, c, h, w, device=device)
            pick = torch.randperm(len(data), generator=gen)
            sample = data.images[pick[:256]].to(device).float().div_(255.0)
            base = blank if self.canvas == "blank" else sample[: self.canvas_size]
            loss = torch.zeros(())
            steps_run = 0
            for steps_run in range(1, self.steps + 1):  # noqa: B007  (reported below)
                act = activations(self.stamp(base, patch))
                loss = ((act - self.target_value) ** 2).sum(1).mean()
                if loss.item() < self.tolerance:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    patch.clamp_(0, 1)
            final = patch.detach().clamp(0, 1)
            with torch.no_grad():
                act_blank = activations(self.stamp(blank, final))[0]
                act_clean = activations(sample).mean(0)
                act_stamped = activations(self.stamp(sample, final)).mean(0)
        finally:
            handle.remove()
        self._patch = final.cpu()
        self._neurons = neurons.cpu()
        self.fit_info = {
            "layer": layer_name,
            "neurons": neurons.cpu().tolist(),
            "steps_run": steps_run,
            "final_loss": loss.item(),
            "activation_on_blank": act_blank.cpu().tolist(),
            "activation_clean_images": act_clean.cpu().tolist(),
            "activation_stamped_images": act_stamped.cpu().tolist(),
        }

    # --- storage ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        if self._patch is None:
            return {}
        out = {"patch": self._patch.clone()}
        if self._neurons is not None:
            out["neurons"] = self._neurons.clone()
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        patch = tensors.get("patch")
        if patch is None or patch.ndim != 3 or tuple(patch.shape[1:]) != (self.size, self.size):
            raise ConfigError(
                f"attack 'trojannn': expected a patch tensor of shape C x {self.size} x "
                f"{self.size}, got {None if patch is None else tuple(patch.shape)}"
            )
        self._patch = patch.detach().float().clamp(0, 1).clone()
        neurons = tensors.get("neurons")
        self._neurons = None if neurons is None else neurons.long().clone()
