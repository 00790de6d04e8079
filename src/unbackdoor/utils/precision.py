"""bfloat16 autocast only where the hardware runs it fast.

The recipes and the benchmark configs ask for bf16 because it makes the fast net's passes
cheaper on GPUs and on CPUs with AVX-512 (oneDNN's bf16 kernels). On a CPU with AVX2 only,
oneDNN emulates bf16 and it is far slower than float32: on an AMD EPYC with AVX2 (2 threads,
2026-12-05) a 3x3 convolution of a 256x64x32x32 batch took 13.3 s in bf16 against 0.18 s in
float32, a fast-net training step on 256 images 23.3 s against 1.3 s
(``benchmarks/foundation/bf16_cpu.md``), and the fast net's CIFAR-10 training, about an hour
on the machines the benchmarks ran on, reached step 30 of 576 in 96 minutes. A request for
bf16 therefore runs in float32 where it would be slow, with one warning, and :func:`bf16_fast`
says which happened (every run's hardware record carries it, see
:func:`unbackdoor.utils.runinfo.hardware`).

``UNBACKDOOR_BF16`` overrides the check: ``auto`` (the default), ``on`` (honour every request)
or ``off`` (float32 everywhere).
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from unbackdoor.errors import ConfigError

ENV = "UNBACKDOOR_BF16"
MODES = ("auto", "on", "off")


@functools.cache
def _cpu_bf16_fast() -> bool:
    # oneDNN has native bf16 kernels from AVX-512 on (x86) and with SVE (Arm)
    capability = torch.backends.cpu.get_cpu_capability()
    return capability.startswith(("AVX512", "SVE"))


def bf16_fast(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 autocast requests run in bf16 on ``device`` (see the module docstring)."""
    mode = os.environ.get(ENV, "auto").lower()
    if mode not in MODES:
        raise ConfigError(f"{ENV}={mode!r} is invalid; expected one of {list(MODES)}")
    if mode != "auto":
        return mode == "on"
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "cpu" and _cpu_bf16_fast()


@functools.cache
def _warn_once(kind: str) -> None:
    what = f"CPU capability {torch.backends.cpu.get_cpu_capability()}" if kind == "cpu" else kind
    warnings.warn(
        f"bf16 was requested but this {kind} has no fast bf16 ({what}): running in float32 "
        f"instead (set {ENV}=on to force bf16)",
        RuntimeWarning,
        stacklevel=4,  # the caller of autocast()
    )


def use_bf16(requested: bool, device: torch.device | str) -> bool:
    """``requested`` where bf16 is fast on ``device``; False (warned once) where it is not."""
    if not requested:
        return False
    if bf16_fast(device):
        return True
    _warn_once(torch.device(device).type)
    return False


def autocast(device: torch.device | str, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device`` when ``enabled`` and fast there (a no-op context otherwise)."""
    return torch.autocast(
        torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16(enabled, device)
    )
