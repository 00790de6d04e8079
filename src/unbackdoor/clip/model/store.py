"""CLIP artifacts: ``model.safetensors`` + ``clip.json``, and :func:`load_clip` for any source.

``clip.json`` records the model kind and its arguments, the tokenizer (a ``tokenizer.json`` is
copied into the directory), the class names and prompt templates of its zero-shot head, and
free-form ``extra`` (the attack that made it, the defense that cleaned it). :func:`load_clip`
also reads what users bring: a Hugging Face ``CLIPModel`` directory, or an OpenAI / open_clip
state dict (``.pt``/``.pth``/``.bin`` through ``torch.load(weights_only=True)``, or
``.safetensors``). Nothing is ever unpickled.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.clip.model.base import ClipModel, Tokenizer
from unbackdoor.clip.model.openai import (
    OpenAIClip,
    OpenAIConfig,
    clean_state_dict,
    config_from_state_dict,
)
from unbackdoor.clip.model.tiny import TinyClip
from unbackdoor.clip.model.tokenize import FileTokenizer, tokenizer_from_config
from unbackdoor.errors import ArtifactError
from unbackdoor.models.artifact import WEIGHTS, load_state_checked, load_weights_file
from unbackdoor.utils.io import atomic_write, atomic_write_json, read_json
from unbackdoor.utils.runinfo import library_versions

CLIP_JSON = "clip.json"
#: open_clip's description of a model, beside its weights in its hub repositories
OPEN_CLIP_CONFIG = "open_clip_config.json"
FORMAT_VERSION = 1

Builder = Callable[[dict[str, Any], Tokenizer | None], ClipModel]


def _tiny(cfg: dict[str, Any], tok: Tokenizer | None) -> ClipModel:
    return TinyClip(**cfg)


def _openai(cfg: dict[str, Any], tok: Tokenizer | None) -> ClipModel:
    if tok is None:
        raise ArtifactError("an OpenAI-layout CLIP artifact needs its tokenizer")
    return OpenAIClip(
        OpenAIConfig(**cfg["cfg"]), tok, mean=tuple(cfg["mean"]), std=tuple(cfg["std"])
    )


def _hf(cfg: dict[str, Any], tok: Tokenizer | None) -> ClipModel:
    from unbackdoor.clip.model.hf import HFClip

    if tok is None:
        raise ArtifactError("a Hugging Face CLIP artifact needs its tokenizer")
    return HFClip(cfg["config"], tok, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def _pretrained(cfg: dict[str, Any], tok: Tokenizer | None) -> ClipModel:
    from unbackdoor.clip.pretrained import OfflineClip

    return OfflineClip(**cfg)


BUILDERS: dict[str, Builder] = {
    "tiny": _tiny,
    "openai": _openai,
    "hf": _hf,
    "pretrained": _pretrained,
}


@dataclass
class ClipManifest:
    """What ``clip.json`` says: kind, arguments, tokenizer, zero-shot head, provenance."""

    kind: str
    config: dict[str, Any]
    tokenizer: dict[str, Any] | None
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def save_clip(
    model: ClipModel,
    directory: str | Path,
    *,
    class_names: list[str] | None = None,
    templates: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``clip.json`` (weights first, each atomically)."""
    from safetensors.torch import save_file

    if model.kind not in BUILDERS:
        raise ArtifactError(f"cannot save a CLIP model of kind {model.kind!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p)))
    tok_cfg = model.tokenizer.config() if model.kind != "pretrained" else None
    if tok_cfg is not None and tok_cfg.get("kind") == "file":
        src = Path(tok_cfg["path"])
        if src.resolve() != (directory / "tokenizer.json").resolve():
            shutil.copyfile(src, directory / "tokenizer.json")
        tok_cfg = dict(tok_cfg, path="tokenizer.json")
    atomic_write_json(
        directory / CLIP_JSON,
        {
            "format_version": FORMAT_VERSION,
            "kind": model.kind,
            "config": model.config(),
            "tokenizer": tok_cfg,
            "class_names": list(class_names or []),
            "templates": list(templates or []),
            "versions": library_versions(),
            "extra": dict(extra or {}),
        },
    )
    return directory


def is_clip_artifact(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by :func:`save_clip`."""
    return (Path(path) / CLIP_JSON).is_file()


def is_clip_source(path: str | Path) -> bool:
    """Whether ``path`` is a CLIP model that :func:`load_clip` reads: an unbackdoor CLIP
    artifact, a Hugging Face CLIP directory, or a weights file (an OpenAI / open_clip state
    dict: classifier artifacts are always directories)."""
    from unbackdoor.clip.model.hf import is_hf_clip_dir

    path = Path(path)
    return path.is_file() or is_clip_artifact(path) or (path.is_dir() and is_hf_clip_dir(path))


def load_clip_manifest(directory: str | Path) -> ClipManifest:
    path = Path(directory) / CLIP_JSON
    d = read_json(path)
    try:
        return ClipManifest(
            kind=str(d["kind"]),
            config=dict(d["config"]),
            tokenizer=d.get("tokenizer"),
            class_names=[str(c) for c in d.get("class_names", [])],
            templates=[str(t) for t in d.get("templates", [])],
            extra=dict(d.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: missing or malformed field ({e!r})") from None


def _open_clip_quick_gelu(path: Path) -> bool:
    """``model_cfg.quick_gelu`` of an ``open_clip_config.json`` (open_clip's default: False)."""
    d = read_json(path)
    cfg = d.get("model_cfg") if isinstance(d, dict) else None
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{path}: no 'model_cfg' object, so not an open_clip model config")
    value = cfg.get("quick_gelu", False)
    if not isinstance(value, bool):
        raise ArtifactError(f"{path}: model_cfg.quick_gelu={value!r} is not true or false")
    return value


def load_clip(
    path: str | Path,
    *,
    tokenizer: str | Path | Tokenizer | None = None,
    device: str = "cpu",
    **openai_kwargs: Any,
) -> tuple[ClipModel, ClipManifest]:
    """Load a CLIP model from an unbackdoor artifact, a HF directory or an OpenAI state dict.

    ``tokenizer``: for an OpenAI / open_clip state dict, a ``tokenizer.json`` (the CLIP BPE as
    Hugging Face ships it); by default one beside the weights file is used. ``openai_kwargs``
    (``vision_heads``, ``text_heads``, ``quick_gelu``) go to
    :func:`~unbackdoor.clip.model.openai.config_from_state_dict`. A state dict does not say
    which GELU its towers used: OpenAI's models use QuickGELU (the default), most open_clip
    ones the exact GELU. An ``open_clip_config.json`` beside the weights (as open_clip's hub
    repositories ship) decides it from its ``model_cfg.quick_gelu`` unless ``quick_gelu`` is
    given.
    """
    path = Path(path)
    tok = tokenizer
    tok_path = tok if isinstance(tok, (str, Path)) else None
    if tok_path is not None:
        tok = FileTokenizer(tok_path)
    if path.is_dir() and is_clip_artifact(path):
        man = load_clip_manifest(path)
        if man.kind not in BUILDERS:
            raise ArtifactError(f"{path / CLIP_JSON}: unknown kind {man.kind!r}")
        if tok is None and man.tokenizer is not None:
            tok = tokenizer_from_config(man.tokenizer, path)
        model = BUILDERS[man.kind](man.config, tok)
        load_state_checked(model, load_weights_file(path / WEIGHTS), str(path / WEIGHTS))
        return model.to(device).eval(), man
    if path.is_dir():
        from unbackdoor.clip.model.hf import is_hf_clip_dir, load_hf_clip

        if not is_hf_clip_dir(path):
            raise ArtifactError(
                f"{path}: neither a CLIP artifact ({CLIP_JSON}) nor a Hugging Face CLIP "
                "directory (config.json with model_type 'clip')"
            )
        model = load_hf_clip(path, tok)
        return model.to(device), ClipManifest("hf", model.config(), model.tokenizer.config())
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file or directory")
    state = clean_state_dict(load_weights_file(path))
    sidecar = path.parent / OPEN_CLIP_CONFIG
    if "quick_gelu" not in openai_kwargs and sidecar.is_file():
        openai_kwargs["quick_gelu"] = _open_clip_quick_gelu(sidecar)
    cfg = config_from_state_dict(state, **openai_kwargs)
    if tok_path is not None:  # the tower's context length, not the tokenizer's default
        tok = FileTokenizer(tok_path, cfg.context_length)
    if tok is None:
        beside = path.parent / "tokenizer.json"
        if not beside.is_file():
            raise ArtifactError(
                f"{path}: an OpenAI / open_clip state dict needs a tokenizer: pass "
                "tokenizer=<tokenizer.json> or put one beside the weights"
            )
        tok = FileTokenizer(beside, cfg.context_length)
    model = OpenAIClip(cfg, tok)
    load_state_checked(model, state, str(path))
    return model.to(device).eval(), ClipManifest("openai", model.config(), tok.config())
