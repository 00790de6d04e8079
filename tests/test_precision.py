"""bf16 requests run in bf16 only where the hardware runs it fast (utils/precision.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from unbackdoor.utils import precision
from unbackdoor.utils.runinfo import hardware


def _dtype_inside(ctx) -> torch.dtype:
    with ctx:
        return torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype


@pytest.mark.parametrize(("fast", "expect"), [(True, torch.bfloat16), (False, torch.float32)])
def test_autocast_follows_the_cpus_bf16_speed(monkeypatch, fast, expect):
    """On a CPU with fast bf16 a request autocasts; on one without (AVX2) it runs in float32
    with one warning; a run that did not ask is float32 and silent."""
    monkeypatch.delenv(precision.ENV, raising=False)
    monkeypatch.setattr(precision, "_cpu_bf16_fast", lambda: fast)
    precision._warn_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _dtype_inside(precision.autocast("cpu", True)) == expect
        assert _dtype_inside(precision.autocast("cpu", True)) == expect
        assert _dtype_inside(precision.autocast("cpu", False)) == torch.float32
    slow = [w for w in caught if "no fast bf16" in str(w.message)]
    assert len(slow) == (0 if fast else 1)
    assert hardware()["bf16"] is fast


@pytest.mark.parametrize(("mode", "expect"), [("on", True), ("off", False), ("OFF", False)])
def test_environment_overrides_the_check(monkeypatch, mode, expect):
    monkeypatch.setenv(precision.ENV, mode)
    monkeypatch.setattr(precision, "_cpu_bf16_fast", lambda: not expect)
    assert precision.bf16_fast("cpu") is expect
    assert precision.use_bf16(True, "cpu") is expect
    assert precision.use_bf16(False, "cpu") is False


def test_a_bad_mode_is_refused(monkeypatch):
    monkeypatch.setenv(precision.ENV, "sometimes")
    with pytest.raises(ValueError, match="UNBACKDOOR_BF16='sometimes'.*auto"):
        precision.bf16_fast("cpu")
