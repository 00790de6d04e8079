"""The CLI on CLIP models (issue 7): attack --clip, evaluate, unlearn on the same commands."""

from __future__ import annotations

import json

import pytest

from unbackdoor.cli import main
from unbackdoor.errors import ConfigError


def run_cli(args: list[str], capsys) -> dict:
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_attack_evaluate_unlearn_a_tiny_clip_on_mnist(tmp_path, capsys):
    bd, clean = tmp_path / "bd", tmp_path / "clean"
    r = run_cli(
        ["attack", "--clip", "tiny", "--dataset", "mnist", "--attack", "badnets",
         "--option", "size=4", "--poison-rate", "0.1", "--train-samples", "1200",
         "--epochs", "3", "--lr", "0.003", "--out", str(bd), "--json"],
        capsys,
    )  # fmt: skip
    assert r["asr"] > 0.5 and r["clean_acc"] > 0.3, r  # a tiny conv CLIP, 1,200 images
    e = run_cli(["evaluate", str(bd), "--json"], capsys)
    assert e["asr"] == pytest.approx(r["asr"]) and e["kind"] == "tiny"
    assert set(e["retrieval"]["image_to_text"]) == {"1", "5", "10"}
    rt = run_cli(
        ["evaluate", str(bd), "--retune", "--retune-samples", "200", "--retune-epochs", "1",
         "--json"],
        capsys,
    )  # fmt: skip
    assert rt["retune_config"]["poisoned"] == 2 and 0 <= rt["retune_asr"] <= 1
    u = run_cli(
        ["unlearn", str(bd), "--method", "clip-tbar", "--known-attack", "--clean-samples", "300",
         "--option", "ca_retention=0.8", "--option", "asr_threshold=0.1",
         "--out", str(clean), "--json"],
        capsys,
    )  # fmt: skip
    assert u["known_attack"] and u["clean_samples_used"] == 300
    after = run_cli(["evaluate", str(clean), "--json"], capsys)
    # plumbing: on this weak tiny model TBAR may find no alpha that keeps 80% of its accuracy
    # (the report says so) and leave the model as it was
    report = json.loads((clean / "report.json").read_text())
    assert "alpha_sweep" in report["diagnostics"]
    assert after["asr"] <= e["asr"] + 1e-9, after


def test_unlearn_on_clip_names_a_wrong_method(tmp_path, capsys):
    from unbackdoor.clip import TinyClip, save_clip

    save_clip(TinyClip(), tmp_path / "m", class_names=["a", "b"], extra={"dataset": "mnist"})
    code = main(
        ["unlearn", str(tmp_path / "m"), "--method", "cleanclp", "--out", str(tmp_path / "o")]
    )
    assert code != 0
    assert "cleanclp" in capsys.readouterr().err
    code = main(["unlearn", str(tmp_path / "m"), "--method", "bibau", "--out", str(tmp_path / "o")])
    assert code != 0
    assert "clip-bibau" in capsys.readouterr().err


def test_evaluate_puts_a_clip_model_on_the_requested_device(tmp_path, capsys, monkeypatch):
    import unbackdoor.clip.api as clip_api
    from unbackdoor.clip import TinyClip, save_clip

    names = [str(i) for i in range(10)]
    save_clip(TinyClip(), tmp_path / "m", class_names=names, extra={"dataset": "mnist"})
    seen: list[str] = []
    real = clip_api.load_clip

    def spy(path, **kw):
        seen.append(kw["device"])  # evaluate names the device, not load_clip's default
        return real(path, **kw)

    monkeypatch.setattr(clip_api, "load_clip", spy)
    e = run_cli(["evaluate", str(tmp_path / "m"), "--device", "cpu", "--json"], capsys)
    assert seen == ["cpu"] and 0 <= e["clean_acc"] <= 1
    code = main(["evaluate", str(tmp_path / "m"), "--device", "tpu9"])
    assert code != 0
    assert "tpu9" in capsys.readouterr().err
    code = main(["evaluate", str(tmp_path / "m"), "--retune", "--retune-eval-every", "4"])
    assert code != 0
    assert "--retune-eval-every" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--policy", "all_to_all"], "--policy"),
        (["--model", "fastnet"], "--model"),
        (["--cover-rate", "0.1"], "--cover-rate"),
        (["--init", "runs/x"], "--init"),
    ],
)
def test_attack_clip_refuses_classifier_only_options(tmp_path, capsys, extra, flag):
    code = main(["attack", "--clip", "tiny", "--out", str(tmp_path / "o"), *extra])
    assert code != 0
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_target_caption_reaches_badclip_and_needs_clip(tmp_path, capsys, monkeypatch):
    import unbackdoor.clip.api as clip_api

    code = main(["attack", "--target-caption", "a banana", "--out", str(tmp_path / "o")])
    assert code != 0 and "--target-caption" in capsys.readouterr().err
    seen = {}

    class Stop(Exception):
        pass

    def spy(name, **options):
        seen.update(options)
        raise Stop

    monkeypatch.setattr(clip_api, "create_attack", spy)
    with pytest.raises(Stop):
        clip_api.attack_clip("tiny", "mnist", "badclip", out=tmp_path, target_caption="a banana")
    assert seen["target_caption"] == "a banana"
    seen.clear()
    with pytest.raises(Stop):  # an attack without such an option gets it only as captions
        clip_api.attack_clip("tiny", "mnist", "badnets", out=tmp_path / "o", target_caption="x")
    assert "target_caption" not in seen
    with pytest.raises(ConfigError, match="target_caption given twice"):
        clip_api.attack_clip(
            "tiny", "mnist", "badclip", out=tmp_path / "o", target_caption="a",
            attack_options={"target_caption": "b"},
        )  # fmt: skip


def test_attack_clip_refuses_to_overwrite_a_finished_model(tmp_path, capsys):
    from unbackdoor.clip import TinyClip, save_clip

    save_clip(TinyClip(), tmp_path / "m", class_names=["a", "b"], extra={"dataset": "mnist"})
    code = main(["attack", "--clip", "tiny", "--train-samples", "20", "--out", str(tmp_path / "m")])
    assert code != 0
    assert "already holds a finished model" in capsys.readouterr().err
