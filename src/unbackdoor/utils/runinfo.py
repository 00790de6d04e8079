"""Seeding and the record of a run (seed, library versions, hardware) written into every result."""

from __future__ import annotations

import os
import platform
import random
from typing import Any

import numpy as np
import torch

from unbackdoor.errors import ConfigError
from unbackdoor.utils.precision import bf16_fast


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a fresh torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("unbackdoor", "torch", "numpy", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # whether bf16 requests ran in bf16 here (float32 where it would be slow)
        "bf16": bf16_fast("cpu"),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_bf16"] = bf16_fast("cuda")
    return info


def run_info(seed: int | None = None) -> dict[str, Any]:
    return {"seed": seed, "versions": library_versions(), "hardware": hardware()}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when present, else the CPU.

    A name torch does not know, or CUDA asked for where there is none, is a
    :class:`~unbackdoor.errors.ConfigError` that names it (not an error deep in a later move).
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {device!r} is not a device torch knows ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but CUDA is not available here")
    return dev
