"""CLIP models: the interface, a tiny test model, the OpenAI/open_clip layout, adapters, I/O."""

from unbackdoor.clip.model.base import ClipModel, Tokenizer
from unbackdoor.clip.model.openai import OpenAIClip, OpenAIConfig, config_from_state_dict
from unbackdoor.clip.model.store import (
    ClipManifest,
    is_clip_artifact,
    is_clip_source,
    load_clip,
    load_clip_manifest,
    save_clip,
)
from unbackdoor.clip.model.tiny import TinyClip
from unbackdoor.clip.model.tokenize import FileTokenizer, HashTokenizer

__all__ = [
    "ClipModel",
    "Tokenizer",
    "OpenAIClip",
    "OpenAIConfig",
    "config_from_state_dict",
    "ClipManifest",
    "is_clip_artifact",
    "is_clip_source",
    "load_clip",
    "load_clip_manifest",
    "save_clip",
    "TinyClip",
    "FileTokenizer",
    "HashTokenizer",
]
