"""CLIP with the OpenAI / open_clip state-dict layout (ViT image tower), in plain PyTorch.

The architecture of Radford et al. (ICML 2021, arXiv 2103.00020) as released by OpenAI and kept
by open_clip (Ilharco et al., 2021): a ViT image tower (``visual.conv1`` patch embedding,
``visual.class_embedding``, ``visual.positional_embedding``, ``visual.ln_pre``,
``visual.transformer.resblocks.N``, ``visual.ln_post``, ``visual.proj``) and a causal text
transformer (``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N``,
``ln_final``, ``text_projection``) whose end-of-text token (the largest id of a row) is pooled,
and ``logit_scale``. Every residual block is ``ln_1``, ``attn`` (an ``nn.MultiheadAttention``,
``in_proj_weight`` and ``out_proj``), ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``. OpenAI's models use
QuickGELU; open_clip's own trainings use GELU (``quick_gelu=False``).

open_clip and torchvision cannot be imported on this project's CPU torch, so this module is
written against the key layout instead; :func:`config_from_state_dict` infers the sizes the way
OpenAI's ``build_model`` does. ResNet image towers (``visual.layer1``...) are not supported.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from unbackdoor.clip.model.base import OPENAI_MEAN, OPENAI_STD, ClipModel, Tokenizer
from unbackdoor.errors import ArtifactError, ConfigError


@dataclass
class OpenAIConfig:
    """Sizes of an OpenAI-layout CLIP (what ``build_model`` reads off the state dict)."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    quick_gelu: bool = True


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of OpenAI's CLIP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block with CLIP's parameter names."""

    def __init__(self, width: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        act: nn.Module = QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", act),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` on L x N x D sequences (``resblocks.N``)."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP's ViT image tower: patches, class token, transformer, ``ln_post``, ``proj``."""

    def __init__(self, cfg: OpenAIConfig) -> None:
        super().__init__()
        w, p = cfg.vision_width, cfg.patch_size
        if cfg.image_size % p:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch {p}")
        scale = w**-0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        grid = cfg.image_size // p
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.quick_gelu)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # N x grid^2 x w
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAIClip(ClipModel):
    """CLIP (ViT) in the OpenAI / open_clip layout; ``state_dict()`` keys match theirs."""

    kind = "openai"

    def __init__(
        self,
        cfg: OpenAIConfig,
        tokenizer: Tokenizer,
        *,
        mean: tuple[float, ...] = OPENAI_MEAN,
        std: tuple[float, ...] = OPENAI_STD,
    ) -> None:
        super().__init__(tokenizer, (cfg.image_size, cfg.image_size), mean=mean, std=std)
        if tokenizer.context_length != cfg.context_length:
            raise ConfigError(
                f"the tokenizer makes {tokenizer.context_length} tokens, the text tower takes "
                f"{cfg.context_length}"
            )
        self.cfg = cfg
        self.visual = VisionTransformer(cfg)
        w = cfg.text_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, w))
        self.transformer = Transformer(w, cfg.text_layers, cfg.text_heads, cfg.quick_gelu)
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(w**-0.5 * torch.randn(w, cfg.embed_dim))
        mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def _encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x.to(self.visual.conv1.weight.dtype))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.cfg.context_length:
            raise ValueError(
                f"token rows of length {tokens.shape[-1]}, the text tower takes "
                f"{self.cfg.context_length}"
            )
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x.transpose(0, 1), self.attn_mask.to(x.dtype)).transpose(0, 1)
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def config(self) -> dict[str, Any]:
        return {
            "cfg": asdict(self.cfg),
            "mean": self.pixel_mean.flatten().tolist(),
            "std": self.pixel_std.flatten().tolist(),
        }


# keys of OpenAI's JIT archives that are not weights
_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop OpenAI's non-weight entries and a ``module.`` prefix."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k in _NON_WEIGHTS or k == "attn_mask":
            continue
        out[k] = v
    return out


def config_from_state_dict(
    state: dict[str, torch.Tensor],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    quick_gelu: bool = True,
) -> OpenAIConfig:
    """Read the sizes off an OpenAI / open_clip ViT state dict (heads: width / 64 by default)."""
    if "visual.conv1.weight" not in state:
        if any(k.startswith("visual.layer1.") for k in state):
            raise ArtifactError(
                "this is a ResNet CLIP (visual.layer1...): only ViT image towers are supported"
            )
        raise ArtifactError(
            "not an OpenAI / open_clip CLIP state dict: no 'visual.conv1.weight' "
            f"(first keys: {', '.join(list(state)[:4])})"
        )
    need = (
        "visual.positional_embedding",
        "text_projection",
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
    )
    missing = [k for k in need if k not in state]
    if missing:
        raise ArtifactError(f"CLIP state dict lacks {', '.join(missing)}")

    def layers(prefix: str) -> int:
        idx = {
            int(k[len(prefix) :].split(".")[0])
            for k in state
            if k.startswith(prefix) and k.endswith(".attn.in_proj_weight")
        }
        return max(idx) + 1 if idx else 0

    conv = state["visual.conv1.weight"]
    vw, patch = conv.shape[0], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    tw = state["ln_final.weight"].shape[0]
    return OpenAIConfig(
        embed_dim=state["text_projection"].shape[1],
        image_size=grid * patch,
        patch_size=patch,
        vision_width=vw,
        vision_layers=layers("visual.transformer.resblocks."),
        vision_heads=vision_heads or max(1, vw // 64),
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        text_width=tw,
        text_layers=layers("transformer.resblocks."),
        text_heads=text_heads or max(1, tw // 64),
        quick_gelu=quick_gelu,
    )
