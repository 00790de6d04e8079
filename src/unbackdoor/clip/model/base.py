"""The small interface every CLIP-style model of unbackdoor implements.

As in CLIP (Radford et al., ICML 2021, arXiv 2103.00020) a model has an image tower and a text
tower that map into one embedding space, and a learned temperature ``logit_scale`` (stored as a
log, so ``logit_scale.exp()`` multiplies the cosine similarities). unbackdoor's contracts hold:
images enter ``encode_image`` as float tensors in [0, 1] (N x C x H x W); resizing to the
tower's input size and the normalisation live inside the model, so triggers stay in pixel space.

Subclasses implement ``_encode_image`` (already resized and normalised input) and
``encode_text`` (token ids from :attr:`tokenizer`), put every image-tower parameter under the
attribute prefixes listed by :meth:`ClipModel.image_prefixes` (TBAR's trigger vector covers
those), and describe themselves with :meth:`ClipModel.config` so that
:func:`unbackdoor.clip.model.store.save_clip` can rebuild them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.errors import DataError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class Tokenizer(Protocol):
    """Turns captions into a ``LongTensor`` of token ids (N x context length)."""

    context_length: int

    def __call__(self, texts: Sequence[str]) -> torch.Tensor: ...

    def config(self) -> dict[str, Any]: ...


def _cover_and_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` scaled (bilinear) to cover ``size`` with its aspect ratio kept, then its centre
    cropped to ``size``; an image of ``size``'s aspect ratio is only resized."""
    (h, w), (th, tw) = x.shape[-2:], size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[..., top : top + th, left : left + tw]


class ClipModel(nn.Module):
    """An image tower and a text tower in one embedding space, and a temperature.

    ``image_size`` and ``in_channels`` are what the image tower takes. Other sizes are resized
    bilinearly; an image of another aspect ratio is first scaled so that it covers
    ``image_size`` and then cropped about its centre, as CLIP's own preprocessing does, rather
    than stretched. 1-channel images are repeated to 3 channels when the tower wants 3.
    """

    kind: ClassVar[str] = "clip"

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_size: tuple[int, int],
        *,
        in_channels: int = 3,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        logit_scale: float | None = 2.659260036932778,  # log(1 / 0.07), CLIP's initial value
    ) -> None:
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
        self.tokenizer = tokenizer
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.in_channels = in_channels
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        if logit_scale is not None:  # None: the subclass holds its own (a wrapped model's)
            self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    # --- to implement ---------------------------------------------------------------------
    def _encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of normalised images already at ``image_size``."""
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embeddings (N x D, not normalised) of token ids from :attr:`tokenizer`."""
        raise NotImplementedError

    def image_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of every image-tower parameter (``"visual."`` by default)."""
        return ("visual.",)

    def config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this model (weights aside)."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    def prepare_images(self, x: torch.Tensor) -> torch.Tensor:
        """Resize, adapt channels and normalise a float batch in [0, 1]."""
        if x.ndim != 4:
            raise DataError(f"images must be N x C x H x W, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_channels, -1, -1)
            else:
                raise DataError(
                    f"{x.shape[1]}-channel images for a model that takes {self.in_channels}"
                )
        return (_cover_and_crop(x, self.image_size) - self.pixel_mean) / self.pixel_std

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (N x D, not normalised) of float images in [0, 1] of any size."""
        return self._encode_image(self.prepare_images(x))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embeddings of captions (tokenised here), computed in batches on the model's device."""
        if isinstance(texts, str):
            raise DataError("encode_texts takes a list of captions, not one string")
        dev = self.logit_scale.device
        out = [
            self.encode_text(self.tokenizer(list(texts[i : i + batch_size])).to(dev))
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)`` of every image against every caption."""
        img = F.normalize(self.encode_image(images), dim=-1)
        txt = F.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()

    def image_keys(self) -> list[str]:
        """State-dict keys of the image tower."""
        pre = self.image_prefixes()
        return [k for k in self.state_dict() if k.startswith(pre)]

    def freeze_text(self) -> None:
        """Stop gradients to every parameter outside the image tower (and the temperature)."""
        pre = self.image_prefixes()
        for name, p in self.named_parameters():
            if not name.startswith(pre):
                p.requires_grad_(False)
