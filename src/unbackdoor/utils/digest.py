"""Content hashes of tensors, so that saved work is only ever resumed on the inputs it came from.

A checkpoint written while purifying one model must not be loaded into the run of another model
or of other defender data that happens to share the config: the digest of the inputs, stored
with the checkpoint, tells them apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]], n: int = 16) -> str:
    """The first ``n`` hex digits of a SHA-256 over names, dtypes, shapes and raw bytes."""
    h = hashlib.sha256()
    for name, t in named:
        if t.is_meta:
            raise ValueError(f"{name}: a meta tensor holds no values to hash")
        t = t.detach().to("cpu")
        t = (t.to_dense() if t.is_sparse else t).contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return h.hexdigest()[:n]
