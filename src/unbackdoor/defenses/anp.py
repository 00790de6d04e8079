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

Iterations: 2000 batches of 128, the official ``optimize_mask_cifar.py`` budget (BackdoorBench's
``nb_iter: 2000``; over the 500 images of the paper's 1% of CIFAR-10 about 500 passes). On this
project's 2-core CPU an iteration of the CIFAR fast net costs about as much as three training
steps (some 3 s in bf16), so the CPU benchmark configs set fewer iterations explicitly and
say so; ``mask_curve`` in the diagnostics records how many masks are under 0.2 as the
optimisation goes, to show whether they had settled. ``bf16=True`` runs the passes in bfloat16
autocast, channels-last on a CPU (a speed option).

Models without BatchNorm get masks on their convolutions' output channels instead (weight and
bias per output channel, the same arithmetic). Masks are applied non-invasively by forward hooks
on a copy, from each layer's output and its shift, so BatchNorms whose scale is fixed at one
(the fast net's, which learn a shift only) are masked as well; the returned model is the input
architecture with some channels pruned, so its state dict loads into the same class. Such a
BatchNorm has no scale to zero: pruning zeroes the filter of the convolution that feeds it and
its running mean, so the channel outputs its shift alone, as a pruned affine BatchNorm does.

Deviations: batches are drawn by epoch without replacement rather than with replacement; the
official code never clips the neuron perturbation back into [-eps, eps] after its step (the
paper's text bounds it), ``clip_noise=True`` does; ``prune_bias=True`` also zeroes the pruned
channels' shifts (the official pruning keeps them).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import Batch, iterate
from unbackdoor.data.transforms import default_augment
from unbackdoor.defenses.base import Defense, DefenseOutput
from unbackdoor.defenses.registry import register_defense
from unbackdoor.eval.metrics import evaluate
from unbackdoor.models.norms import is_shift_only_norm
from unbackdoor.utils.precision import autocast
from unbackdoor.utils.progress import progress
from unbackdoor.utils.runinfo import resolve_device

LAYERS = ("auto", "bn", "conv", "all")
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_norm(m: nn.Module) -> bool:
    return (isinstance(m, BN) and m.affine) or is_shift_only_norm(m)


def neuron_layers(model: nn.Module, kind: str = "auto") -> list[tuple[str, nn.Module]]:
    """The layers whose output channels are ANP's neurons.

    ``bn``: BatchNorms with a learned shift (the paper's neurons; affine ones, and ones whose
    scale is fixed at one); ``conv``: convolutions; ``auto``: BatchNorms, or convolutions in a
    model without any; ``all``: ``auto`` plus the hidden units of linear layers (every
    ``nn.Linear`` but the last, the classifier), for heads without BatchNorm.
    """
    named = list(model.named_modules())
    norms = [(n, m) for n, m in named if _is_norm(m)]
    convs = [(n, m) for n, m in named if isinstance(m, nn.Conv2d)]
    found = norms if kind == "bn" or (kind != "conv" and norms) else convs
    if kind == "all":
        found = found + [(n, m) for n, m in named if isinstance(m, nn.Linear)][:-1]
    if not found:
        raise TypeError(f"ANP found no layer of kind {kind!r} to mask")
    return found


def channel_count(m: nn.Module) -> int:
    """The number of output channels (neurons) of a maskable layer."""
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    return int(m.running_var.numel()) if is_shift_only_norm(m) else int(m.weight.shape[0])


def channel_shift(m: nn.Module) -> torch.Tensor | None:
    """The per-channel additive term of a layer's output (its bias as the forward uses it)."""
    bias = getattr(m, "bias", None)
    if not isinstance(bias, torch.Tensor):
        return None
    scale = float(getattr(m, "bias_scale", 1.0))  # the fast net's reparameterised BN shift
    return bias * scale if scale != 1.0 else bias


def _per_channel(t: torch.Tensor, out: torch.Tensor, linear: bool) -> torch.Tensor:
    return t if linear else t.view(1, -1, *([1] * (out.dim() - 2)))


@dataclass
class _Neurons:
    """Masks and perturbations of every neuron, applied by forward hooks on a model copy.

    A layer's output ``y = s * z + b`` (``b`` its per-channel shift, ``s * z`` the rest) becomes
    ``m * (s * z) + b`` for the clean model and ``(m + delta) * (s * z) + (1 + xi) * b`` for the
    perturbed one: for a BatchNorm that is the paper's ``gamma * (m + delta)`` and
    ``beta * (1 + xi)`` (``NoisyBatchNorm2d`` in the official code), computed from the layer's
    output, so any layer with a per-channel scale and shift can be masked without rewriting it.
    """

    layers: list[tuple[str, nn.Module]]
    masks: list[torch.Tensor]
    noise: list[torch.Tensor]
    noise_bias: list[torch.Tensor | None]  # None for a layer without a shift
    perturbed: bool = False

    @classmethod
    def attach(cls, layers: list[tuple[str, nn.Module]], device: torch.device) -> _Neurons:
        def leaf(n: int) -> torch.Tensor:
            return torch.zeros(n, device=device, requires_grad=True)

        sizes = [channel_count(m) for _, m in layers]
        masks = [torch.ones(n, device=device, requires_grad=True) for n in sizes]
        noise_bias = [
            leaf(n) if channel_shift(m) is not None else None
            for n, (_, m) in zip(sizes, layers, strict=True)
        ]
        neurons = cls(layers, masks, [leaf(n) for n in sizes], noise_bias)
        for i, (_, m) in enumerate(layers):
            m.register_forward_hook(neurons._hook(i, isinstance(m, nn.Linear)))
        return neurons

    def _hook(self, i: int, linear: bool) -> Any:
        def hook(module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
            coeff = self.masks[i] + self.noise[i] if self.perturbed else self.masks[i]
            shift = channel_shift(module)
            if shift is None:
                return out * _per_channel(coeff, out, linear)
            b = _per_channel(shift, out, linear)
            scaled = (out - b) * _per_channel(coeff, out, linear)
            nb = self.noise_bias[i]
            return scaled + (b * (1.0 + _per_channel(nb, out, linear)) if self.perturbed else b)

        return hook

    def noise_tensors(self) -> list[torch.Tensor]:
        return self.noise + [t for t in self.noise_bias if t is not None]

    def values(self) -> list[tuple[str, int, float]]:
        """(layer, channel, mask) for every neuron, in layer order."""
        return [
            (name, i, float(v))
            for (name, _), mask in zip(self.layers, self.masks, strict=True)
            for i, v in enumerate(mask.detach().cpu().tolist())
        ]


def _producer(modules: list[tuple[str, nn.Module]], name: str, channels: int) -> nn.Conv2d:
    """The convolution feeding a shift-only BatchNorm: the nearest one registered before it
    with as many output channels (conv -> [pool] -> BN, as in the fast net)."""
    names = [n for n, _ in modules]
    for _, m in reversed(modules[: names.index(name)]):
        if isinstance(m, nn.Conv2d) and m.out_channels == channels:
            return m
    raise TypeError(
        f"ANP cannot prune {name!r}: its scale is fixed and no convolution with {channels} "
        "output channels precedes it"
    )


def prune(model: nn.Module, neurons: list[tuple[str, int, float]], bias: bool = False) -> None:
    """Zero the scale (and with ``bias`` the shift) of each ``(layer, channel)`` in place.

    A BatchNorm with a fixed scale has no scale to zero: its input channel is zeroed instead
    (the feeding convolution's filter) and its running mean set to 0, so the channel outputs
    its shift alone, as a pruned affine BatchNorm does, in eval and in train mode.
    """
    named = list(model.named_modules())
    modules = dict(named)
    with torch.no_grad():
        for name, i, _ in neurons:
            m = modules[name]
            if is_shift_only_norm(m):
                conv = _producer(named, name, channel_count(m))
                conv.weight[i] = 0.0
                if conv.bias is not None:
                    conv.bias[i] = 0.0
                m.running_mean[i] = 0.0
            else:
                m.weight[i] = 0.0
            if bias and isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias[i] = 0.0


@register_defense
@dataclass
class ANP(Defense):
    """ANP: adversarial neuron perturbation finds backdoor neurons, which are then pruned."""

    name: ClassVar[str] = "anp"
    relative_cost: ClassVar[float] = 2.0

    iterations: int = 2000
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
    bf16: bool = False

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
        neurons = _Neurons.attach(neuron_layers(net, self.layers), device)
        mask_opt = torch.optim.SGD(neurons.masks, lr=self.lr, momentum=0.9)
        noise = neurons.noise_tensors()
        augment = default_augment(clean.name, clean.images.shape[-1]) if self.augment else None
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        curve: list[dict[str, float]] = []
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
        every = max(1, self.iterations // 20)

        nhwc = self.bf16 and device.type == "cpu"
        if nhwc:
            net.to(memory_format=torch.channels_last)

        def forward(x: torch.Tensor, perturbed: bool) -> torch.Tensor:
            neurons.perturbed = perturbed
            with autocast(device, self.bf16):
                return net(x).float()

        bar = progress(range(self.iterations), desc="anp: masks", total=self.iterations)
        batches = self._batches(clean, augment, device, nhwc)
        for it in bar:
            batch = next(batches)
            if self.eps > 0:
                with torch.no_grad():
                    for t in noise:  # random start in [-eps, eps], from a seeded CPU generator
                        t.copy_(torch.empty(t.shape).uniform_(-self.eps, self.eps, generator=gen))
                for _ in range(self.steps):
                    loss = -F.cross_entropy(forward(batch.x, True), batch.y)
                    grads = torch.autograd.grad(loss, noise, allow_unused=True)
                    with torch.no_grad():
                        for t, g in zip(noise, grads, strict=True):
                            if g is not None:  # None: a neuron the loss does not reach
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

    def _batches(
        self, data: ImageDataset, augment: Any, device: torch.device, channels_last: bool
    ) -> Iterator[Batch]:
        """Batches without end, reshuffled every pass (the official sampler draws with
        replacement)."""
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
                channels_last=channels_last,
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
