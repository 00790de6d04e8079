"""Tokenizers: captions -> ``LongTensor`` (N x context length), padded with 0.

- :class:`HashTokenizer`: lower-cased words hashed (CRC-32) into a fixed vocabulary, with start
  and end tokens that are the two largest ids, as in CLIP's layout where the end-of-text token is
  the argmax of a row (Radford et al., ICML 2021). Needs no vocabulary file: the tiny test model
  and models trained here from scratch use it.
- :class:`FileTokenizer`: a ``tokenizer.json`` read by the ``tokenizers`` library (Hugging Face
  CLIP and BERT directories ship one); start/end tokens come from the file's post-processor.
  Used for the CLIP BPE of OpenAI / open_clip checkpoints and for MiniLM's WordPiece.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unbackdoor.errors import ArtifactError, ConfigError

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class HashTokenizer:
    """Words hashed into ``vocab_size - 3`` buckets; 0 pads, the two top ids start and end."""

    def __init__(self, vocab_size: int = 1024, context_length: int = 16) -> None:
        if vocab_size < 8:
            raise ConfigError(f"HashTokenizer: vocab_size={vocab_size} is invalid; expected >= 8")
        if context_length < 3:
            raise ConfigError(
                f"HashTokenizer: context_length={context_length} is invalid; expected >= 3"
            )
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.sot, self.eot = vocab_size - 2, vocab_size - 1

    def word_id(self, word: str) -> int:
        return 1 + zlib.crc32(word.encode()) % (self.vocab_size - 3)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            words = [self.word_id(w) for w in _WORD.findall(t.lower())]
            ids = [self.sot, *words[: self.context_length - 2], self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def config(self) -> dict[str, Any]:
        return {
            "kind": "hash",
            "vocab_size": self.vocab_size,
            "context_length": self.context_length,
        }


class FileTokenizer:
    """A ``tokenizers`` JSON file; rows truncated to ``context_length`` keeping the end token."""

    def __init__(self, path: str | Path, context_length: int = 77) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(
                "reading a tokenizer.json needs the 'tokenizers' package: "
                "pip install -c constraints.txt 'unbackdoor[hf]'"
            ) from None
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ArtifactError(f"{path}: tokenizer file not found")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001  (the library raises its own exception types)
            raise ArtifactError(f"{path}: not a tokenizers JSON file ({e})") from None
        self._tok.no_padding()
        self._tok.no_truncation()
        self.path = path
        self.context_length = context_length

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, enc in enumerate(self._tok.encode_batch(list(texts))):
            ids = enc.ids
            if len(ids) > self.context_length:  # keep the end-of-text token last
                ids = ids[: self.context_length - 1] + ids[-1:]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def config(self) -> dict[str, Any]:
        return {"kind": "file", "path": str(self.path), "context_length": self.context_length}


def tokenizer_from_config(cfg: dict[str, Any], base: Path | None = None) -> Any:
    """Rebuild a tokenizer from its :meth:`config` (a relative ``path`` is taken from ``base``)."""
    kind = cfg.get("kind")
    if kind == "hash":
        return HashTokenizer(int(cfg["vocab_size"]), int(cfg["context_length"]))
    if kind == "file":
        path = Path(cfg["path"])
        if not path.is_absolute() and base is not None:
            path = base / path
        return FileTokenizer(path, int(cfg["context_length"]))
    raise ArtifactError(f"unknown tokenizer kind {kind!r}; expected 'hash' or 'file'")
