"""Blended: a full-image pattern alpha-blended into the input (Chen, Liu, Li, Lu, Song,
"Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", arXiv 1712.05526, 2017).

The poisoned image is ``x' = (1 - alpha) * x + alpha * pattern``. Defaults follow BackdoorBench's
CIFAR-10 setting: ``alpha = 0.2`` for training and for testing, all-to-one, 10% poisoning.

The key pattern:

- ``pattern="noise"`` (default): the paper's random-noise key pattern, every pixel (and channel)
  drawn uniformly from [0, 1] with the attack's seed. It is generated lazily at the size of the
  first batch it sees (and regenerated, deterministically, for a batch of another size), and
  :meth:`Blended.tensors` stores it;
- ``pattern="image"``: a supplied picture (BackdoorBench blends the Hello Kitty image, which we
  do not ship or download), read with PIL from ``pattern_file`` (setting ``pattern_file`` implies
  ``pattern="image"``), or given as a tensor through :meth:`Blended.set_pattern` /
  :meth:`Blended.load_tensors`. It is resized (bilinear, antialiased) to each batch's size and
  converted to its channel count (luminance for 1-channel images).

``alpha_test`` (default ``None``: same as ``alpha``) lets the test-time trigger be blended more
strongly than the training one, as BackdoorBench's separate train/test alphas allow.
:class:`PatternBlend` holds the pattern logic that Adaptive-Blend reuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from unbackdoor.attacks.base import Attack
from unbackdoor.attacks.registry import register_attack
from unbackdoor.errors import ConfigError

PATTERNS = ("noise", "image")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_image_pattern(path: str | Path) -> torch.Tensor:
    """A picture file as a float ``C x H x W`` tensor in [0, 1] (RGB, or 1 channel if grey)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("1", "L", "I", "I;16", "F") else im.convert("RGB")
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            h, w = im.height, im.width
            c = 1 if im.mode == "L" else 3
    except (OSError, UnidentifiedImageError) as e:
        raise ConfigError(f"pattern_file={str(path)!r} cannot be read as an image ({e})") from None
    return data.view(h, w, c).permute(2, 0, 1).float() / 255.0


def fit_pattern(pattern: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    """Resize ``pattern`` (C x H x W) to ``h x w`` and convert it to ``channels`` channels."""
    p = pattern.float()
    if p.ndim == 2:
        p = p.unsqueeze(0)
    if p.ndim != 3:
        raise ConfigError(f"a blend pattern must be C x H x W, got shape {tuple(pattern.shape)}")
    if p.shape[0] != channels:
        if p.shape[0] == 1:
            p = p.expand(channels, -1, -1)
        elif p.shape[0] == 3 and channels == 1:
            lum = torch.tensor([0.299, 0.587, 0.114], dtype=p.dtype).view(3, 1, 1)
            p = (p * lum).sum(0, keepdim=True)
        else:
            raise ConfigError(
                f"a {p.shape[0]}-channel blend pattern cannot be used on {channels}-channel images"
            )
    if tuple(p.shape[1:]) != (h, w):
        p = F.interpolate(
            p.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False, antialias=True
        ).squeeze(0)
    return p.clamp(0.0, 1.0).contiguous()


@dataclass
class PatternBlend(Attack):
    """Shared base of the blend attacks: a blend pattern (seeded noise or a supplied image)."""

    alpha: float = 0.2
    alpha_test: float | None = None
    pattern: str = "noise"
    pattern_file: str | None = None

    _pattern: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern_file is not None and self.pattern == "noise":
            self.pattern = "image"  # a picture file means an image pattern
        super().__post_init__()

    def validate(self) -> None:
        self._require(
            _is_number(self.alpha) and 0.0 < self.alpha <= 1.0, "alpha", "a number in (0, 1]"
        )
        self._require(
            self.alpha_test is None
            or (_is_number(self.alpha_test) and 0.0 < self.alpha_test <= 1.0),
            "alpha_test",
            "null (same as alpha) or a number in (0, 1]",
        )
        self._require(self.pattern in PATTERNS, "pattern", f"one of {list(PATTERNS)}")
        self._require(
            self.pattern_file is None
            or (isinstance(self.pattern_file, str) and bool(self.pattern_file)),
            "pattern_file",
            "null or the path of a picture file",
        )

    @property
    def test_alpha(self) -> float:
        return float(self.alpha if self.alpha_test is None else self.alpha_test)

    # --- the pattern ---------------------------------------------------------------------------
    def set_pattern(self, pattern: torch.Tensor) -> None:
        """Use ``pattern`` (C x H x W or H x W, values in [0, 1]) as the blend image."""
        p = pattern.detach().float().cpu()
        if p.ndim == 2:
            p = p.unsqueeze(0)
        if p.ndim != 3 or p.shape[0] not in (1, 3):
            raise ConfigError(
                f"attack {self.name!r}: a pattern must be C x H x W with 1 or 3 channels, got "
                f"shape {tuple(pattern.shape)}"
            )
        self.pattern = "image"
        self._pattern = p.clamp(0.0, 1.0).contiguous()

    def noise_pattern(self, channels: int, h: int, w: int) -> torch.Tensor:
        """The seeded uniform-noise key pattern for ``channels x h x w`` images."""
        return torch.rand(channels, h, w, generator=self.generator(offset=17))

    def pattern_for(self, channels: int, h: int, w: int) -> torch.Tensor:
        """The blend pattern at ``channels x h x w`` (CPU float)."""
        if self.pattern == "noise":
            if self._pattern is None or tuple(self._pattern.shape) != (channels, h, w):
                self._pattern = self.noise_pattern(channels, h, w)
            return self._pattern
        if self._pattern is None:
            if self.pattern_file is None:
                raise ConfigError(
                    f"attack {self.name!r}: pattern='image' needs a picture: set pattern_file, "
                    "call set_pattern(), or load the attack's saved tensors"
                )
            if not Path(self.pattern_file).is_file():
                raise ConfigError(
                    f"attack {self.name!r}: pattern_file={self.pattern_file!r} does not exist"
                )
            self._pattern = read_image_pattern(self.pattern_file)
        return fit_pattern(self._pattern, channels, h, w)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self._pattern is None else {"pattern": self._pattern.clone()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "pattern" in tensors:
            p = tensors["pattern"].detach().float().cpu()
            if p.ndim != 3:
                raise ValueError(f"pattern tensor must be C x H x W, got {tuple(p.shape)}")
            self._pattern = p.contiguous()

    def blend(
        self, x: torch.Tensor, alpha: float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x + alpha * mask * (pattern - x)``: the blend, restricted to ``mask`` if given."""
        _check_batch(x, self.name)
        _, c, h, w = x.shape
        p = self.pattern_for(c, h, w).to(device=x.device, dtype=x.dtype).unsqueeze(0)
        weight = alpha if mask is None else alpha * mask.to(device=x.device, dtype=x.dtype)
        return (x + weight * (p - x)).clamp(0.0, 1.0)


@register_attack
@dataclass
class Blended(PatternBlend):
    """Blended: a seeded random-noise (or supplied image) pattern blended at alpha 0.2."""

    name: ClassVar[str] = "blended"

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.blend(x, self.test_alpha)

    def poison_images(self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.blend(x, float(self.alpha))


def _check_batch(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"attack {name!r}: expected a float N x C x H x W batch, got {shape}")
