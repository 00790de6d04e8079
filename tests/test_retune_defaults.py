"""The re-tuning attack's learning rate defaults per model kind (CLI and Python API).

The classifier recipe (Adam 5e-4) erodes a CLIP backdoor by itself, so CLIP models default to
5e-5 (``benchmarks/clip``); an explicit ``--retune-lr`` wins for both kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import unbackdoor.api as api
import unbackdoor.clip.api as clip_api
import unbackdoor.clip.model.store as clip_store
from unbackdoor.cli import main
from unbackdoor.clip.eval.retune import CLIP_RETUNE_LR, clip_retune_config
from unbackdoor.eval.metrics import Metrics
from unbackdoor.eval.retune import RetuneConfig, RetuneResult


def test_clip_config_has_the_clip_rate_and_keeps_overrides():
    assert CLIP_RETUNE_LR == 5e-5 and RetuneConfig().lr == 5e-4
    cfg = clip_retune_config(samples=50, epochs=3)
    assert (cfg.lr, cfg.samples, cfg.epochs) == (CLIP_RETUNE_LR, 50, 3)
    assert clip_retune_config(lr=1e-3).lr == 1e-3


def _fake_result(config: RetuneConfig) -> RetuneResult:
    m = Metrics(clean_acc=0.9, asr=0.1)
    curve = [{"step": 0, "asr": 0.1, "clean_acc": 0.9}, {"step": 16, "asr": 0.6, "clean_acc": 0.8}]
    return RetuneResult(m, m, curve, {**config.__dict__, "poisoned": 0})


@pytest.fixture
def seen(monkeypatch):
    """Record the config each kind's re-tuning receives, without training anything."""
    got: dict[str, RetuneConfig] = {}

    def clip_retune(directory, dataset=None, config=None):
        got["clip"] = config
        return _fake_result(config)

    def classifier_retune(directory, dataset=None, config=None, *, attack_from=None):
        got["classifier"] = config
        return _fake_result(config)

    monkeypatch.setattr(clip_api, "retune_clip_artifact", clip_retune)
    monkeypatch.setattr(
        clip_api,
        "evaluate_clip_artifact",
        lambda *a, **k: {"clean_acc": 0.9, "asr": 0.1, "retrieval": {"image_to_text": {1: 0.5}}},
    )
    monkeypatch.setattr(api, "retune_artifact", classifier_retune)
    monkeypatch.setattr(api, "evaluate_artifact", lambda *a, **k: Metrics(clean_acc=0.9, asr=0.1))
    monkeypatch.setattr(clip_store, "is_clip_artifact", lambda d: Path(d).name == "clip")
    return got


@pytest.mark.parametrize(
    ("kind", "args", "lr"),
    [
        ("clip", [], CLIP_RETUNE_LR),
        ("clip", ["--retune-lr", "1e-4"], 1e-4),
        ("classifier", [], 5e-4),
        ("classifier", ["--retune-lr", "1e-4"], 1e-4),
    ],
)
def test_evaluate_retune_lr_default_follows_the_model_kind(seen, tmp_path, capsys, kind, args, lr):
    directory = tmp_path / kind
    code = main(["evaluate", str(directory), "--retune", "--retune-samples", "200", *args])
    assert code == 0, capsys.readouterr().out
    cfg = seen[kind]
    assert cfg.lr == pytest.approx(lr) and cfg.samples == 200


def test_evaluate_retune_curve_points_and_plot(seen, tmp_path, capsys):
    png = tmp_path / "curve.png"
    args = ["--retune", "--retune-eval-every", "4", "--retune-plot", str(png), "--json"]
    assert main(["evaluate", str(tmp_path / "classifier"), *args]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen["classifier"].eval_every == 4 and out["retune_plot"] == str(png)
    assert png.is_file() and png.stat().st_size > 1000
    assert main(["evaluate", str(tmp_path / "classifier"), "--retune-plot", str(png)]) == 2
    assert "--retune-plot needs --retune" in capsys.readouterr().err


def test_evaluate_retune_json_records_the_rate(seen, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "clip"), "--retune", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["retune_config"]["lr"] == CLIP_RETUNE_LR


def test_python_retune_artifact_sends_clip_models_to_the_clip_attack(monkeypatch, tmp_path):
    got = {}

    def clip_retune(directory, dataset=None, config=None):
        got["config"] = config
        return "clip result"

    monkeypatch.setattr(clip_api, "retune_clip_artifact", clip_retune)
    monkeypatch.setattr(clip_store, "is_clip_artifact", lambda d: True)
    assert api.retune_artifact(tmp_path) == "clip result" and got["config"] is None
