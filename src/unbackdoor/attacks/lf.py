"""LF: a smooth, low-frequency additive trigger (Zeng, Park, Mao, Jia, "Rethinking the Backdoor
Attacks' Triggers: A Frequency Perspective", ICCV 2021, arXiv 2104.03413).

The paper shows that most triggers carry high-frequency artifacts that a simple frequency
detector catches, and proposes smooth triggers instead: a universal adversarial perturbation
(UAP) towards the target class, searched on a clean model while a low-pass filter (a Gaussian
smoothing, std 6 px on 32x32 CIFAR-10 in the authors' code) is applied after every update, and
then min-max normalised to a range of 0.2. The poisoned image is ``clip(x + v, 0, 1)``; all-to-one,
and BackdoorBench's CIFAR-10 setting poisons 10%. BackdoorBench ships a precomputed pattern
(``resource/lowFrequency/*.npy``) that we do not have offline.

What this module does, and where it deviates:

- without a model (the default path, ``needs_model = False``), the trigger is *generated*: seeded
  uniform noise, low-pass filtered in the Fourier domain by a Gaussian window equivalent to a
  Gaussian blur of std ``sigma`` pixels (``sigma = 6`` at 32 px, scaled with the image side),
  made zero-mean and scaled to an L_inf norm of ``epsilon = 0.1`` (peak-to-peak 0.2, the
  original's range). It is smooth like the paper's trigger but it is *not adversarial*: it does
  not exploit the clean model's decision boundary, so it may need more poisoning than the
  original to reach the same attack success rate;
- with a model, :meth:`LowFrequency.fit` searches the UAP the paper describes, though with
  projected sign-gradient steps on the cross-entropy towards the target (``steps`` steps,
  ``batch_size`` non-target samples each, step ``step_size * epsilon``) in place of the authors'
  per-sample DeepFool updates, low-pass filtering and rescaling to L_inf ``epsilon`` after each
  step (rescaling, not clipping, keeps the trigger smooth). The target class is the one given, not
  the "dominant" class the authors' code picks after the search.
- the generated trigger is zero-mean (the original's min-max normalisation to [0, 0.2] adds a
  brightness offset of about 0.1 on top of the same peak-to-peak range).

The pattern is stored by :meth:`LowFrequency.tensors`, so a fitted trigger survives
``save_attack`` / ``load_attack``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack
from unbackdoor.data.dataset import ImageDataset


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def gaussian_lowpass(v: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Low-pass ``v`` (... x H x W) with a Gaussian window in the Fourier domain.

    The window ``exp(-2 pi^2 sigma^2 |f|^2)`` (``f`` in cycles per pixel) is the transfer function
    of a Gaussian blur of std ``sigma_px`` pixels with periodic borders.
    """
    h, w = v.shape[-2:]
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64).view(1, -1)
    window = torch.exp(-2.0 * math.pi**2 * sigma_px**2 * (fy**2 + fx**2))
    spec = torch.fft.rfft2(v.to(torch.float64)) * window
    return torch.fft.irfft2(spec, s=(h, w)).to(v.dtype)


@register_attack
@dataclass
class LowFrequency(Attack):
    """LF: smooth low-frequency additive trigger (L_inf 0.1), optionally a low-pass UAP."""

    name: ClassVar[str] = "lf"

    epsilon: float = 0.1
    sigma: float = 6.0
    steps: int = 200
    step_size: float = 0.1
    batch_size: int = 128

    _pattern: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _fitted: bool = field(default=False, init=False, repr=False, compare=False)

    def validate(self) -> None:
        self._require(
            _is_number(self.epsilon) and 0.0 < self.epsilon <= 1.0,
            "epsilon",
            "a number in (0, 1] (the trigger's L_inf norm)",
        )
        self._require(
            _is_number(self.sigma) and self.sigma > 0,
            "sigma",
            "a positive low-pass std in pixels (at 32 px)",
        )
        self._require(
            isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 0,
            "steps",
            "an integer >= 0",
        )
        self._require(
            _is_number(self.step_size) and 0.0 < self.step_size <= 1.0,
            "step_size",
            "a number in (0, 1] (a fraction of epsilon)",
        )
        self._require(
            isinstance(self.batch_size, int)
            and not isinstance(self.batch_size, bool)
            and self.batch_size >= 1,
            "batch_size",
            "a positive integer",
        )

    # --- the trigger ---------------------------------------------------------------------------
    def sigma_px(self, h: int, w: int) -> float:
        return float(self.sigma) * min(h, w) / 32.0

    def smooth(self, v: torch.Tensor) -> torch.Tensor:
        """Low-pass ``v`` and rescale it to L_inf ``epsilon``."""
        v = gaussian_lowpass(v, self.sigma_px(*v.shape[-2:]))
        peak = v.abs().max()
        return v * (float(self.epsilon) / peak) if peak > 0 else v

    def generated_pattern(self, channels: int, h: int, w: int) -> torch.Tensor:
        """The seeded smooth pattern (zero-mean, L_inf ``epsilon``) for ``channels x h x w``."""
        noise = torch.rand(channels, h, w, generator=self.generator(offset=29)) * 2 - 1
        v = gaussian_lowpass(noise, self.sigma_px(h, w))
        return self.smooth(v - v.mean())

    def pattern_for(self, channels: int, h: int, w: int) -> torch.Tensor:
        p = self._pattern
        if p is not None and tuple(p.shape) == (channels, h, w):
            return p
        if p is None or not self._fitted:
            self._pattern, self._fitted = self.generated_pattern(channels, h, w), False
            return self._pattern
        # A fitted pattern used at another size: resample it (it stays smooth) and re-project.
        if p.shape[0] != channels:
            p = p.mean(0, keepdim=True).expand(channels, -1, -1)
        p = F.interpolate(p.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False)[0]
        return p.clamp(-float(self.epsilon), float(self.epsilon))

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"attack 'lf': expected a float N x C x H x W batch, got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}"
            )
        _, c, h, w = x.shape
        v = self.pattern_for(c, h, w).to(device=x.device, dtype=x.dtype)
        return (x + v.unsqueeze(0)).clamp(0.0, 1.0)

    # --- the low-pass universal perturbation ---------------------------------------------------
    def fit(
        self,
        data: ImageDataset,
        model: nn.Module | None = None,
        *,
        target: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        """With a clean ``model``, search the low-pass universal perturbation towards ``target``;
        without one, keep the generated smooth pattern."""
        c, h, w = data.input_shape
        if model is None or self.steps == 0:
            self._pattern, self._fitted = self.generated_pattern(c, h, w), False
            return
        pool = torch.nonzero(data.labels != target).flatten()
        if pool.numel() == 0:
            pool = torch.arange(len(data))
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device(device)  # the model's own
        g = self.generator(offset=31)
        eps, step = float(self.epsilon), float(self.step_size) * float(self.epsilon)
        v = self.generated_pattern(c, h, w).to(device)
        was_training = model.training
        model.eval()
        try:
            for _ in range(self.steps):
                pick = pool[
                    torch.randint(pool.numel(), (min(self.batch_size, pool.numel()),), generator=g)
                ]
                xb = data.images[pick].to(device).float() / 255.0
                yb = torch.full((xb.shape[0],), int(target), dtype=torch.long, device=device)
                v.requires_grad_(True)
                loss = F.cross_entropy(model((xb + v).clamp(0.0, 1.0)), yb)
                (grad,) = torch.autograd.grad(loss, v)
                with torch.no_grad():
                    v = self.smooth((v - step * grad.sign()).detach())
        finally:
            model.train(was_training)
        self._pattern = v.detach().cpu().clamp(-eps, eps).contiguous()
        self._fitted = True

    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self._pattern is None else {"pattern": self._pattern.clone()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "pattern" in tensors:
            p = tensors["pattern"].detach().float().cpu()
            if p.ndim != 3:
                raise ValueError(f"pattern tensor must be C x H x W, got {tuple(p.shape)}")
            self._pattern, self._fitted = p.contiguous(), True
