"""Adapter for Hugging Face ``transformers`` ``CLIPModel`` directories (optional extra ``[hf]``).

A directory written by ``CLIPModel.save_pretrained`` holds ``config.json``, the weights
(``model.safetensors``, possibly sharded, or ``pytorch_model.bin``), and usually the processor's
``preprocessor_config.json`` (image size, mean, std) and ``tokenizer.json``. The model is built
from the config and the weights are read here, safetensors or ``torch.load(weights_only=True)``,
never by unpickling. CLIP itself: Radford et al., ICML 2021 (arXiv 2103.00020).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unbackdoor.clip.model.base import OPENAI_MEAN, OPENAI_STD, ClipModel, Tokenizer
from unbackdoor.clip.model.tokenize import FileTokenizer
from unbackdoor.errors import ArtifactError, ConfigError
from unbackdoor.models.artifact import load_weights_file


def require_transformers() -> Any:
    """The ``transformers`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "Hugging Face CLIP models need the 'transformers' package: "
            "pip install -c constraints.txt 'unbackdoor[hf]'"
        ) from None
    return transformers


def is_hf_clip_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` of ``model_type`` ``clip``."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "clip"
    except (OSError, ValueError):
        return False


class HFClip(ClipModel):
    """A ``transformers.CLIPModel`` behind the :class:`ClipModel` interface (``hf.*`` keys)."""

    kind = "hf"

    def __init__(
        self,
        config: dict[str, Any],
        tokenizer: Tokenizer,
        *,
        mean: tuple[float, ...] = OPENAI_MEAN,
        std: tuple[float, ...] = OPENAI_STD,
    ) -> None:
        tf = require_transformers()
        hf_cfg = tf.CLIPConfig.from_dict(dict(config))
        size = int(hf_cfg.vision_config.image_size)
        super().__init__(tokenizer, (size, size), mean=mean, std=std, logit_scale=None)
        self.hf = tf.CLIPModel(hf_cfg)
        self._config = hf_cfg.to_dict()

    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]
        return self.hf.logit_scale

    def image_prefixes(self) -> tuple[str, ...]:
        return ("hf.vision_model.", "hf.visual_projection.")

    def _encode_image(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.hf.vision_model(pixel_values=x).pooler_output
        return self.hf.visual_projection(pooled)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        # causal attention: the padding after the end token does not reach its state
        pooled = self.hf.text_model(input_ids=tokens).pooler_output
        return self.hf.text_projection(pooled)

    def config(self) -> dict[str, Any]:
        return {
            "config": self._config,
            "mean": self.pixel_mean.flatten().tolist(),
            "std": self.pixel_std.flatten().tolist(),
        }


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_weights_file(directory / shard))
        return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return load_weights_file(directory / name)
    raise ArtifactError(f"{directory}: no model.safetensors or pytorch_model.bin")


def load_hf_clip(directory: str | Path, tokenizer: Tokenizer | None = None) -> HFClip:
    """Load a ``CLIPModel.save_pretrained`` directory (weights read safely)."""
    directory = Path(directory)
    if not is_hf_clip_dir(directory):
        raise ArtifactError(f"{directory}: not a Hugging Face CLIP directory (config.json)")
    config = json.loads((directory / "config.json").read_text())
    mean, std = OPENAI_MEAN, OPENAI_STD
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        mean = tuple(p.get("image_mean", mean))
        std = tuple(p.get("image_std", std))
    if tokenizer is None:
        if not (directory / "tokenizer.json").is_file():
            raise ArtifactError(
                f"{directory}: no tokenizer.json; pass a tokenizer (a tokenizer.json path)"
            )
        ctx = int(config.get("text_config", {}).get("max_position_embeddings", 77))
        tokenizer = FileTokenizer(directory / "tokenizer.json", ctx)
    model = HFClip(config, tokenizer, mean=mean, std=std)
    state = _read_hf_weights(directory)
    expected = model.hf.state_dict()
    # position_ids are buffers that some transformers versions save and others do not
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    missing = [k for k in expected if k not in state and not k.endswith("position_ids")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ArtifactError(
            f"{directory}: weights do not match config.json: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ArtifactError(
                f"{directory}: tensor {k!r} has shape {tuple(v.shape)}, config.json expects "
                f"{tuple(expected[k].shape)}"
            )
    model.hf.load_state_dict(state, strict=False)
    return model.eval()
