"""Input-aware dynamic backdoor: a generator gives every image its own trigger (Nguyen, Tran,
"Input-Aware Dynamic Backdoor Attack", NeurIPS 2020, arXiv 2010.08138).

Two small encoder-decoder conv nets of the paper's architecture (conv-BN-ReLU pairs with max-pool
down, bilinear upsampling up; ``tanh / 2 + 1/2`` output): the pattern generator ``g`` and the mask
generator ``m``. A triggered image is ``x' = x + mask(x) * (g(x) - x)`` with the near-binary
``mask = tanh(20 m(x) - 10) / 2 + 1/2``.

:meth:`InputAware.fit` follows the paper's two stages, on a short, configurable budget:

1. the mask net alone, ``mask_steps`` steps (the paper: 25 epochs) of
   ``lambda_norm * mean(relu(mask - mask_density)) + lambda_div * ||x1 - x2|| / ||m(x1) - m(x2)||``;
2. the mask net frozen, ``steps`` steps training ``g`` jointly with a classifier: in each batch a
   fraction ``p_attack`` is triggered and relabelled to the target, a further
   ``cross_ratio * p_attack`` gets the trigger of another image (the cross-trigger mode) and keeps
   its true label, and the diversity loss ``||x1 - x2|| / ||g(x1) - g(x2)||`` keeps the triggers
   input-specific. Classifier: SGD lr 0.01 (momentum 0.9, wd 5e-4); generators: Adam lr 0.01,
   betas (0.5, 0.9), as in the paper's code.

The classifier has the victim's architecture when ``fit`` is given a model (``surrogate="auto"``),
else a small CNN. Then both generators are frozen: :meth:`apply` triggers with ``g`` and ``m``;
:meth:`cover_images` returns the cross-trigger images (each image stamped with the trigger of a
partner image in the batch, chosen by a seeded hash of the sample indices).

Defaults follow the paper and BackdoorBench's CIFAR-10 config: ``mask_density=0.032``,
``lambda_div=1``, ``lambda_norm=100``, poisoning rate 0.1 with as many cross samples
(``cross_ratio=1``); the generators are the paper's (width 16 and two down-steps for inputs
smaller than 32 pixels, as its MNIST net; width 32 and three down-steps otherwise).

Budget (defaults ``mask_steps=50``, ``steps=1200``, ``batch_size=128``, i.e. about three
CIFAR-10 epochs of generator training), measured single-threaded with the small-CNN classifier:
about 1.2 CPU-s per mask step and 0.27 per generator step on CIFAR-10, 0.4 and 0.11 on MNIST.
The default was 300 steps until the CIFAR-10 zoo model trained with it reached ASR 93.4% only
(target 95%, ``benchmarks/attacks/cifar10.md``). With the victim's
architecture as the classifier, the generator steps cost what training that model costs (ten
times more for a PreAct-ResNet-18). Longer fits give stronger triggers: on 4,000 MNIST images
with cross samples and a 5-epoch tiny victim, 300 steps gave ASR 0.66 and 600 steps 0.74;
without cross samples (``cross_ratio=0``) 100 steps already give ASR 1.0.

Deviations: the paper trains the generator and the victim together for hundreds of epochs; here
the generator is trained for a short budget (``steps``, ``mask_steps``; the paper's learning-rate
milestones lie beyond it, except the mask net's, scaled to 40% / 80% of ``mask_steps``), frozen,
and the victim is then trained from scratch on the pre-computed poisoned set, as BackdoorBench
stores it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack
from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.transforms import default_augment
from unbackdoor.errors import ConfigError

_EPS = 1e-7
SURROGATES = ("auto", "small_cnn")


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout, momentum=0.05),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class TriggerNet(nn.Module):
    """The paper's encoder-decoder: ``depth`` (conv, conv, max-pool) steps down from ``width``
    channels (doubling), a middle conv, then ``depth`` (upsample, conv, conv) steps back up to
    ``out_channels``; the output is ``tanh(.) / 2 + 1/2`` in (0, 1)."""

    def __init__(self, in_channels: int, out_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c_in, c = in_channels, width
        for step in range(depth):
            self.down.append(nn.Sequential(_ConvBlock(c_in, c), _ConvBlock(c, c)))
            if step < depth - 1:
                c_in, c = c, c * 2
        self.middle = _ConvBlock(c, c)
        self.up = nn.ModuleList()
        for step in range(depth):
            last = step == depth - 1
            c_next = out_channels if last else c // 2
            self.up.append(nn.Sequential(_ConvBlock(c, c), _ConvBlock(c, c_next, relu=not last)))
            c = c_next

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = []
        for block in self.down:
            x = block(x)
            sizes.append(x.shape[-2:])
            x = F.max_pool2d(x, 2)
        x = self.middle(x)
        for block, size in zip(self.up, reversed(sizes), strict=True):
            x = block(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False))
        return torch.tanh(x) / (2 + _EPS) + 0.5


def threshold(m: torch.Tensor) -> torch.Tensor:
    """The paper's near-binary mask: ``tanh(20 m - 10) / 2 + 1/2``."""
    return torch.tanh(m * 20 - 10) / (2 + _EPS) + 0.5


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean(dim=(1, 2, 3)).sqrt()


@register_attack
@dataclass
class InputAware(Attack):
    """A trained, input-specific trigger generator with cross-trigger cover samples."""

    name: ClassVar[str] = "input_aware"
    policy: ClassVar[str] = "all_to_one"
    default_rate: ClassVar[float] = 0.1
    needs_model: ClassVar[bool] = False
    fit_resolves: ClassVar[tuple[str, ...]] = ("gen_width", "gen_depth")

    cross_ratio: float = 1.0
    mask_density: float = 0.032
    lambda_div: float = 1.0
    lambda_norm: float = 100.0
    p_attack: float = 0.1
    steps: int = 1200
    mask_steps: int = 50
    batch_size: int = 128
    lr_g: float = 0.01
    lr_m: float = 0.01
    lr_c: float = 0.01
    gen_width: int = 0  # 0: the paper's choice for the input size (16 below 32 px, else 32)
    gen_depth: int = 0  # 0: 2 below 32 px (the paper's MNIST net), else 3
    surrogate: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._g: TriggerNet | None = None
        self._m: TriggerNet | None = None
        self.fit_info: dict[str, Any] = {}  # diagnostics of the last fit (not configuration)

    def validate(self) -> None:
        self._require(self.cross_ratio >= 0, "cross_ratio", ">= 0")
        self._require(0 < self.mask_density < 1, "mask_density", "a fraction in (0, 1)")
        self._require(self.lambda_div >= 0, "lambda_div", ">= 0")
        self._require(self.lambda_norm >= 0, "lambda_norm", ">= 0")
        self._require(0 < self.p_attack < 1, "p_attack", "a fraction in (0, 1)")
        self._require(
            self.p_attack * (1 + self.cross_ratio) < 1,
            "cross_ratio",
            "(1 + cross_ratio) * p_attack < 1",
        )
        self._require(self.steps >= 1, "steps", "an integer >= 1")
        self._require(
            isinstance(self.mask_steps, int) and self.mask_steps >= 0,
            "mask_steps",
            "an integer >= 0",
        )
        self._require(
            isinstance(self.batch_size, int) and self.batch_size >= 8,
            "batch_size",
            "an integer >= 8",
        )
        for lr in ("lr_g", "lr_m", "lr_c"):
            self._require(getattr(self, lr) > 0, lr, "a positive learning rate")
        self._require(
            isinstance(self.gen_width, int) and self.gen_width >= 0,
            "gen_width",
            "an integer >= 0 (0: the paper's width)",
        )
        self._require(
            isinstance(self.gen_depth, int) and 0 <= self.gen_depth <= 5,
            "gen_depth",
            "an integer in 0..5 (0: the paper's depth)",
        )
        self._require(self.surrogate in SURROGATES, "surrogate", f"one of {list(SURROGATES)}")

    # --- generators ---------------------------------------------------------------------------
    def _arch(self, h: int, w: int) -> tuple[int, int]:
        small = min(h, w) < 32
        width = self.gen_width or (16 if small else 32)
        depth = self.gen_depth or (2 if small else 3)
        if min(h, w) < 2**depth:
            raise ConfigError(
                f"attack 'input_aware': gen_depth={depth} halves {h}x{w} images too often"
            )
        return width, depth

    @property
    def fitted(self) -> bool:
        return self._g is not None and self._m is not None

    def _nets(self, device: torch.device | str) -> tuple[TriggerNet, TriggerNet]:
        if self._g is None or self._m is None:
            raise ConfigError(
                "attack 'input_aware': the trigger generator is not trained; call fit(data, ...) "
                "first (or load a saved attack with its tensors)"
            )
        return self._g.to(device), self._m.to(device)

    def trigger_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pattern, mask)`` the frozen generators give ``x``."""
        g, m = self._nets(x.device)
        g.eval()
        m.eval()
        with torch.no_grad():
            return g(x), threshold(m(x))

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        pattern, mask = self.trigger_parts(x)
        return (x + mask * (pattern - x)).clamp(0, 1)

    def partners(self, index: torch.Tensor) -> torch.Tensor:
        """For each sample, the position in the batch whose trigger it gets in cross mode: the
        next sample in an order set by a seeded hash of the indices (never itself for n > 1)."""
        idx = torch.as_tensor(index).cpu().long().flatten()
        key = (idx * 2_654_435_761 + int(self.seed) * 40_503 + 12_345) % 2_147_483_647
        order = torch.argsort(key, stable=True)
        partner = torch.empty_like(order)
        partner[order] = order.roll(-1)
        return partner

    def cover_images(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Cross-trigger images: each image carries the trigger generated for its partner."""
        n = x.shape[0]
        idx = torch.as_tensor(index).flatten()
        if idx.numel() != n:
            raise ConfigError(f"attack 'input_aware': {idx.numel()} indices for a batch of {n}")
        if n == 1:  # no partner in the batch: use the image shifted by half its size
            other = x.roll(shifts=(x.shape[-2] // 2, x.shape[-1] // 2), dims=(-2, -1))
        else:
            other = x[self.partners(idx).to(x.device)]
        pattern, mask = self.trigger_parts(other)
        return (x + mask * (pattern - x)).clamp(0, 1)

    def suggested_cover_rate(self, rate: float) -> float:
        """``cross_ratio * rate`` cross-trigger samples (the paper: rho_cross = rho_attack)."""
        return float(self.cross_ratio) * float(rate)

    # --- fitting ------------------------------------------------------------------------------
    def fit(
        self,
        data: ImageDataset,
        model: nn.Module | None = None,
        *,
        target: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        """Train the mask net, then the pattern generator jointly with a classifier."""
        if not 0 <= target < data.num_classes:
            raise ConfigError(
                f"attack 'input_aware': target={target} is not a class of {data.name} "
                f"({data.num_classes} classes)"
            )
        if len(data) < 2:
            raise ConfigError(f"attack 'input_aware': {data.name} has too few samples to fit")
        c, h, w = data.input_shape
        width, depth = self._arch(h, w)
        self.gen_width, self.gen_depth = width, depth  # recorded in the config
        device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed) * 1_000_003 + 7)
            g = TriggerNet(c, c, width, depth).to(device)
            m = TriggerNet(c, 1, width, depth).to(device)
            clf = self._classifier(data, model).to(device)
            mask_info = self._fit_mask(data, m, device)
            info = self._fit_generator(data, g, m, clf, target, device)
        for net in (g, m):
            net.eval().requires_grad_(False)
        self._g, self._m = g.cpu(), m.cpu()
        self.fit_info = {**mask_info, **info, "gen_width": width, "gen_depth": depth}

    def _classifier(self, data: ImageDataset, model: nn.Module | None) -> nn.Module:
        from unbackdoor.models.registry import create_from_spec, create_model

        if model is not None and self.surrogate == "auto":
            spec = getattr(model, "spec", None)
            if spec is not None:
                return create_from_spec(spec)
            clone = copy.deepcopy(model)
            for mod in clone.modules():
                if hasattr(mod, "reset_parameters"):
                    mod.reset_parameters()
            return clone
        c, h, w = data.input_shape
        return create_model("small_cnn", data.num_classes, in_channels=c, input_size=(h, w))

    def _batches(self, data: ImageDataset, steps: int, device: torch.device, offset: int):
        """``steps`` pairs of independently shuffled, augmented batches (x1, y1, x2)."""
        n = len(data)
        bs = min(self.batch_size, n)
        augment = default_augment(data.name, data.images.shape[-1])
        gen = self.generator(offset)
        orders: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * 2
        pos = [n, n]
        for _ in range(steps):
            picked = []
            for k in range(2):
                if pos[k] + bs > n:
                    orders[k], pos[k] = torch.randperm(n, generator=gen), 0
                picked.append(orders[k][pos[k] : pos[k] + bs])
                pos[k] += bs
            x1 = data.images[picked[0]].float().div_(255)
            x2 = data.images[picked[1]].float().div_(255)
            if augment is not None:
                x1, x2 = augment(x1, gen), augment(x2, gen)
            yield x1.to(device), data.labels[picked[0]].to(device), x2.to(device)

    def _fit_mask(self, data: ImageDataset, m: TriggerNet, device: torch.device) -> dict:
        if self.mask_steps == 0:
            return {"mask_loss": None}
        opt = torch.optim.Adam(m.parameters(), self.lr_m, betas=(0.5, 0.9))
        milestones = [int(0.4 * self.mask_steps), int(0.8 * self.mask_steps)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1)
        m.train()
        loss = norm = div = torch.zeros(())
        for x1, _, x2 in self._batches(data, self.mask_steps, device, offset=101):
            m1, m2 = threshold(m(x1)), threshold(m(x2))
            div = (_distance(x1, x2) / (_distance(m1, m2) + _EPS)).mean()
            norm = F.relu(m1 - self.mask_density).mean()
            loss = self.lambda_norm * norm + self.lambda_div * div
            opt.zero_grad(set_to_none=True)
            loss.backward()
            loss, norm, div = loss.detach(), norm.detach(), div.detach()
            opt.step()
            sched.step()
        m.eval().requires_grad_(False)
        return {
            "mask_loss": loss.item(),
            "mask_norm_loss": norm.item(),
            "mask_div_loss": div.item(),
        }

    def _fit_generator(
        self,
        data: ImageDataset,
        g: TriggerNet,
        m: TriggerNet,
        clf: nn.Module,
        target: int,
        device: torch.device,
    ) -> dict:
        opt_c = torch.optim.SGD(clf.parameters(), self.lr_c, momentum=0.9, weight_decay=5e-4)
        opt_g = torch.optim.Adam(g.parameters(), self.lr_g, betas=(0.5, 0.9))
        g.train()
        clf.train()
        m.eval()
        sums = torch.zeros(3)  # correct: clean, bd, cross
        counts = torch.zeros(3)
        tail = max(1, self.steps // 5)  # report accuracies over the last fifth of the steps
        loss_ce = loss_div = torch.zeros(())
        for step, (x1, y1, x2) in enumerate(self._batches(data, self.steps, device, offset=202)):
            bs = x1.shape[0]
            nb = max(1, int(self.p_attack * bs))
            nc = min(bs - nb - 1, int(self.p_attack * self.cross_ratio * bs))
            n2 = max(nb, nc)
            pattern1 = g(x1[:nb])
            with torch.no_grad():
                mask1 = threshold(m(x1[:nb]))
                mask2 = threshold(m(x2[nb : nb + n2]))
            pattern2 = g(x2[nb : nb + n2])
            x_bd = x1[:nb] + mask1 * (pattern1 - x1[:nb])
            x_cross = x1[nb : nb + nc] + mask2[:nc] * (pattern2[:nc] - x1[nb : nb + nc])
            inputs = torch.cat([x_bd, x_cross, x1[nb + nc :]])
            labels = torch.cat([torch.full_like(y1[:nb], target), y1[nb:]])
            logits = clf(inputs)
            loss_ce = F.cross_entropy(logits, labels)
            k = min(nb, n2)
            loss_div = (
                _distance(x1[:k], x2[nb : nb + k]) / (_distance(pattern1[:k], pattern2[:k]) + _EPS)
            ).mean()
            loss = loss_ce + self.lambda_div * loss_div
            opt_c.zero_grad(set_to_none=True)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_c.step()
            opt_g.step()
            loss_ce, loss_div = loss_ce.detach(), loss_div.detach()
            if step >= self.steps - tail:
                hit = (logits.argmax(1) == labels).float().detach().cpu()
                sums += torch.stack([hit[nb + nc :].sum(), hit[:nb].sum(), hit[nb : nb + nc].sum()])
                counts += torch.tensor([bs - nb - nc, nb, nc], dtype=torch.float32)
        acc = [float(s / c) if c > 0 else None for s, c in zip(sums, counts, strict=True)]
        return {
            "fit_clean_acc": acc[0],
            "fit_bd_acc": acc[1],
            "fit_cross_acc": acc[2],
            "fit_ce_loss": loss_ce.item(),
            "fit_div_loss": loss_div.item(),
            "classifier": type(clf).__name__,
        }

    # --- storage ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        if not self.fitted:
            return {}
        out = {f"generator.{k}": v.detach().cpu() for k, v in self._g.state_dict().items()}
        out.update({f"mask.{k}": v.detach().cpu() for k, v in self._m.state_dict().items()})
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        nets = {}
        for prefix, out_key in (("generator.", "g"), ("mask.", "m")):
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            first = state.get("down.0.0.0.weight")
            if first is None:
                raise ConfigError(f"attack 'input_aware': no {prefix[:-1]} weights in the tensors")
            depth = sum(1 for k in state if k.startswith("down.") and k.endswith(".0.0.weight"))
            width, in_channels = int(first.shape[0]), int(first.shape[1])
            out_channels = in_channels if out_key == "g" else 1
            net = TriggerNet(in_channels, out_channels, width, depth)
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise ConfigError(
                    f"attack 'input_aware': bad {prefix[:-1]} weights ({e})"
                ) from None
            nets[out_key] = net.eval().requires_grad_(False)
            self.gen_width, self.gen_depth = width, depth
        self._g, self._m = nets["g"], nets["m"]
