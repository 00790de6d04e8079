"""ANP: adversarial neuron pruning (Wu and Wang, "Adversarial Neuron Pruning Purifies Backdoored
Deep Models", NeurIPS 2021, arXiv 2110.14430; official code github.com/csdongxian/ANP_backdoor).

Backdoor neurons are the ones whose small multiplicative perturbation flips the model. Each
neuron (a BatchNorm channel: its scale and shift) gets a mask ``m`` in [0, 1] and an adversarial
perturbation: the channel's scale becomes ``gamma * (m + delta)`` and its shift
``beta * (1 + xi)``, with ``delta, xi`` drawn uniformly from [-eps, eps] and then moved
``steps`` signed-gradient steps of size ``eps / steps`` up the loss. The masks minimise
``alpha * L(clean model) + (1 - alpha) * L(perturbed model)`` by SGD (lr 0.2, momentum 0.9)
and are clipped to [0, 1]; neurons with small masks are pruned by zeroing their BatchNorm scale
(``mask = 0``: the channel then outputs its shift alone), as in ``prune_neuron_cifar.py``.

Defaults follow ``optimize_mask_cifar.py`` (eps 0.4, 1 step, alpha 0.2, mask lr 0.2, batch 128,
the model in train mode and the training augmentation on the clean data
during mask optimisation; pruning is applied to the untouched model) and the paper's pruning
threshold 0.2. The official code sweeps thresholds (0 to 0.9 by 0.05) or neuron counts and
reports the *test* accuracy and ASR of each; BackdoorBench then picks the sweep point with the
lowest test ASR. That uses test data, which a defender does not have. Here the sweep runs on the
defender's held-out ``val`` split only: the largest pruning up to ``pruning_max`` (threshold 0.2
or a neuron count) whose val accuracy stays within ``acc_tolerance`` (relative) of the unpruned
model's. ``select_on_val=False`` prunes at ``pruning_max`` directly, as the paper does.

Iterations: the official 2000 batches of 128 over 500 images (1% of CIFAR-10) are about 500
passes over the data. On a CPU an iteration of the 2-conv MNIST net costs about as much as
three training steps, so the default is scaled down to 500 iterations (about 27 passes over the
2,400 images of a 5% MNIST defender set); in our runs the number of masks below 0.2 stopped
changing after about 300 iterations. ``iterations=2000`` is the paper's budget.

Models without BatchNorm get masks on their convolutions' output channels instead (weight and
bias per output channel, the same arithmetic). Masks are applied non-invasively with
:func:`torch.func.functional_call` on a copy; the returned model is the input architecture with
some channels' scales set to zero, so its state dict loads into the same class.

Deviations: batches are drawn by epoch without replacement rather than with replacement; the
official code never clips the neuron perturbation back into [-eps, eps] after its step (the
paper's text bounds it), ``clip_noise=True`` does; ``prune_bias=True`` also zeroes the pruned
channels' shifts (the official pruning keeps them).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import iterate
from unbackdoor.data.transforms import default_augment
from unbackdoor.defenses.base import Defense, DefenseOutput
from unbackdoor.defenses.registry import register_defense
from unbackdoor.eval.metrics import evaluate
from unbackdoor.utils.progress import progress
from unbackdoor.utils.runinfo import resolve_device

LAYERS = ("auto", "bn", "conv", "all")
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def neuron_layers(model: nn.Module, kind: str = "auto") -> list[tuple[str, nn.Module]]:
    """The layers whose output channels are ANP's neurons.

    ``bn``: affine BatchNorms (the paper's neurons); ``conv``: convolutions; ``auto``: BatchNorms,
    or convolutions in a model without any; ``all``: ``auto`` plus the hidden units of linear
    layers (every ``nn.Linear`` but the last, the classifier), for heads without BatchNorm.
    """
    named = list(model.named_modules())
    bns = [(n, m) for n, m in named if isinstance(m, BN) and m.affine]
    convs = [(n, m) for n, m in named if isinstance(m, nn.Conv2d)]
    found = bns if kind == "bn" or (kind != "conv" and bns) else convs
    if kind == "all":
        found = found + [(n, m) for n, m in named if isinstance(m, nn.Linear)][:-1]
    if not found:
        raise TypeError(f"ANP found no layer of kind {kind!r} to mask")
    return found


def _shape(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class _Neurons:
    """Masks and perturbations of every neuron; ``params(...)`` is a functional_call override."""

    layers: list[tuple[str, nn.Module]]
    masks: list[torch.Tensor]
    noise: list[torch.Tensor]
    noise_bias: list[torch.Tensor]

    @classmethod
    def create(cls, layers: list[tuple[str, nn.Module]], device: torch.device) -> _Neurons:
        sizes = [m.weight.shape[0] for _, m in layers]
        ones = [torch.ones(n, device=device, requires_grad=True) for n in sizes]
        zeros = [[torch.zeros(n, device=device, requires_grad=True) for n in sizes] for _ in "ab"]
        return cls(layers, ones, *zeros)

    def params(self, perturbed: bool) -> dict[str, torch.Tensor]:
        out = {}
        for (name, m), mask, nw, nb in zip(
            self.layers, self.masks, self.noise, self.noise_bias, strict=True
        ):
            coeff = mask + nw if perturbed else mask
            out[f"{name}.weight"] = m.weight * _shape(coeff, m.weight)
            if m.bias is not None and perturbed:
                out[f"{name}.bias"] = m.bias * (1.0 + nb)
        return out

    def values(self) -> list[tuple[str, int, float]]:
        """(layer, channel, mask) for every neuron, in layer order."""
        return [
            (name, i, float(v))
            for (name, _), mask in zip(self.layers, self.masks, strict=True)
            for i, v in enumerate(mask.detach().cpu().tolist())
        ]


def prune(model: nn.Module, neurons: list[tuple[str, int, float]], bias: bool = False) -> None:
    """Zero the scale (and with ``bias`` the shift) of each ``(layer, channel)`` in place."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, i, _ in neurons:
            m = modules[name]
            m.weight[i] = 0.0
            if bias and m.bias is not None:
                m.bias[i] = 0.0


@register_defense
@dataclass
class ANP(Defense):
    """ANP: adversarial neuron perturbation finds backdoor neurons, which are then pruned."""

    name: ClassVar[str] = "anp"

    iterations: int = 500
    batch_size: int = 128
    lr: float = 0.2
    eps: float = 0.4
    steps: int = 1
    alpha: float = 0.2
    augment: bool = True
    layers: str = "auto"
    pruning_by: str = "threshold"
    pruning_max: float | None = None
    pruning_step: float | None = None
    select_on_val: bool = True
    acc_tolerance: float = 0.05
    clip_noise: bool = False
    prune_bias: bool = False

    def validate(self) -> None:
        self._require(self.iterations >= 1, "iterations", ">= 1")
        self._require(self.batch_size >= 1, "batch_size", ">= 1")
        self._require(self.lr > 0, "lr", "> 0")
        self._require(self.eps >= 0, "eps", ">= 0")
        self._require(self.steps >= 1, "steps", ">= 1")
        self._require(0 <= self.alpha <= 1, "alpha", "in [0, 1]")
        self._require(self.layers in LAYERS, "layers", f"one of {LAYERS}")
        self._require(
            self.pruning_by in ("threshold", "number"), "pruning_by", "'threshold' or 'number'"
        )
        if self.pruning_by == "threshold":
            self._require(
                self.pruning_max is None or 0 <= self.pruning_max <= 1,
                "pruning_max",
                "None or a mask threshold in [0, 1]",
            )
            self._require(
                self.pruning_step is None or 0 < self.pruning_step <= 1,
                "pruning_step",
                "None or in (0, 1]",
            )
        else:
            self._require(
                self.pruning_max is None or self.pruning_max >= 0,
                "pruning_max",
                "None or a number of neurons >= 0",
            )
            self._require(
                self.pruning_step is None or self.pruning_step >= 1,
                "pruning_step",
                "None or a number of neurons >= 1",
            )
        self._require(0 <= self.acc_tolerance < 1, "acc_tolerance", "in [0, 1)")

    # ------------------------------------------------------------------ mask optimisation
    def optimise_masks(
        self, model: nn.Module, clean: ImageDataset, device: torch.device
    ) -> tuple[_Neurons, list[dict[str, float]]]:
        """ANP's min-max over masks and neuron perturbations, on a copy of ``model``."""
        net = copy.deepcopy(model).to(device)
        net.requires_grad_(False)
        net.train()  # as the official mask optimisation (batch statistics, dropout on)
        neurons = _Neurons.create(neuron_layers(net, self.layers), device)
        mask_opt = torch.optim.SGD(neurons.masks, lr=self.lr, momentum=0.9)
        noise = neurons.noise + neurons.noise_bias
        augment = default_augment(clean.name, clean.images.shape[-1]) if self.augment else None
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        curve: list[dict[str, float]] = []
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
        every = max(1, self.iterations // 20)

        def forward(x: torch.Tensor, perturbed: bool) -> torch.Tensor:
            return functional_call(net, neurons.params(perturbed), (x,))

        bar = progress(range(self.iterations), desc="anp: masks", total=self.iterations)
        batches = self._batches(clean, augment, device)
        for it in bar:
            batch = next(batches)
            if self.eps > 0:
                with torch.no_grad():
                    for t in noise:  # random start in [-eps, eps], from a seeded CPU generator
                        t.copy_(torch.empty(t.shape).uniform_(-self.eps, self.eps, generator=gen))
                for _ in range(self.steps):
                    loss = -F.cross_entropy(forward(batch.x, True), batch.y)
                    grads = torch.autograd.grad(loss, noise)
                    with torch.no_grad():
                        for t, g in zip(noise, grads, strict=True):
                            t -= self.eps / self.steps * g.sign()
                            if self.clip_noise:
                                t.clamp_(-self.eps, self.eps)
                loss_rob = F.cross_entropy(forward(batch.x, True), batch.y)
            else:
                loss_rob = torch.zeros((), device=device)
            logits = forward(batch.x, False)
            loss = self.alpha * F.cross_entropy(logits, batch.y) + (1 - self.alpha) * loss_rob
            mask_opt.zero_grad(set_to_none=True)
            loss.backward()
            mask_opt.step()
            with torch.no_grad():
                for m in neurons.masks:
                    m.clamp_(0.0, 1.0)
            n = batch.y.numel()
            correct = float((logits.argmax(1) == batch.y).sum())
            sums += torch.tensor([float(loss.detach()) * n, correct, n], dtype=torch.float64)
            if (it + 1) % every == 0 or it + 1 == self.iterations:
                masks = torch.cat([m.detach() for m in neurons.masks])
                curve.append(
                    {
                        "iteration": it + 1,
                        "loss": float(sums[0] / sums[2]),
                        "train_acc": float(sums[1] / sums[2]),
                        "masks_below_0.2": int((masks <= 0.2).sum()),
                        "mean_mask": float(masks.mean()),
                    }
                )
                sums.zero_()
        return neurons, curve

    def _batches(self, data: ImageDataset, augment: Any, device: torch.device):
        epoch = 0
        while True:
            yield from iterate(
                data,
                self.batch_size,
                shuffle=True,
                seed=self.seed,
                epoch=epoch,
                augment=augment,
                device=device,
            )
            epoch += 1

    # ------------------------------------------------------------------ pruning
    def run(
        self, model: nn.Module, clean: ImageDataset, val: ImageDataset, *, known_attack: Any = None
    ) -> DefenseOutput:
        device = resolve_device(self.device)
        model.to(device)
        neurons, curve = self.optimise_masks(model, clean, device)
        order = sorted(neurons.values(), key=lambda v: v[2])
        if self.pruning_by == "threshold":
            top = 0.2 if self.pruning_max is None else self.pruning_max
            step = 0.05 if self.pruning_step is None else self.pruning_step
            points = [min(top, i * step) for i in range(math.ceil(top / step - 1e-9) + 1)]
            counts = [sum(v[2] <= t for v in order) for t in points]
        else:
            top = min(
                len(order),
                round(0.1 * len(order)) if self.pruning_max is None else int(self.pruning_max),
            )
            step = 1 if self.pruning_step is None else int(self.pruning_step)
            points = sorted({*range(0, top + 1, step), top})
            counts = list(points)
        base_acc = evaluate(model, val, device=device).clean_acc
        sweep: list[dict[str, Any]] = []
        chosen: int | None = len(points) - 1
        if self.select_on_val:  # the largest pruning whose val accuracy stays within tolerance
            chosen = None
            for i, (p, c) in enumerate(zip(points, counts, strict=True)):
                trial = copy.deepcopy(model)
                prune(trial, order[:c], self.prune_bias)
                acc = evaluate(trial, val, device=device).clean_acc
                sweep.append({"point": p, "pruned": c, "val_clean_acc": acc})
                if acc >= base_acc * (1 - self.acc_tolerance):
                    chosen = i
        pruned = order[: counts[chosen]] if chosen is not None else []
        prune(model, pruned, self.prune_bias)
        model.eval()
        val_acc = evaluate(model, val, device=device).clean_acc
        return DefenseOutput(
            model,
            diagnostics={
                "mask_curve": curve,
                "val_sweep": sweep,
                "val_clean_acc_before": base_acc,
                "val_clean_acc": val_acc,
                "pruning_by": self.pruning_by,
                "chosen": points[chosen] if chosen is not None else None,
                "pruned": [[name, i, round(v, 4)] for name, i, v in pruned],
                "num_neurons": len(order),
                "layers": [name for name, _ in neurons.layers],
            },
        )
