"""CLIP attacks and defenses (issue 7) on a tiny backdoored CLIP trained here in seconds.

The data are colour-tinted noise images of four classes; the backdoor is a 4x4 checkerboard
patch whose poisoned pairs (10%) carry captions of class 0, implanted by contrastive
fine-tuning of a clean tiny CLIP.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from unbackdoor.attacks import create_attack
from unbackdoor.clip import TinyClip, load_clip, save_clip, zero_shot_classifier
from unbackdoor.clip.attacks import backdoor_clip
from unbackdoor.clip.data import caption_pairs
from unbackdoor.clip.eval import zero_shot_metrics
from unbackdoor.clip.train import finetune_contrastive
from unbackdoor.data import ImageDataset
from unbackdoor.defenses import create_defense
from unbackdoor.errors import ArtifactError, ConfigError
from unbackdoor.models import create_model
from unbackdoor.train import TrainConfig

CLASSES = ["cat", "dog", "car", "ship"]


def tinted(n: int, seed: int, size: int = 16) -> ImageDataset:
    cols = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]).float()
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.rand(n, 3, size, size, generator=g) * 0.5 + 0.4 * cols[y].view(n, 3, 1, 1)
    return ImageDataset((x.clamp(0, 1) * 255).to(torch.uint8), y, list(CLASSES), "tinted")


def cfg(epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, batch_size=64, optimizer="adam", lr=lr, weight_decay=0.0,
        schedule="cosine", warmup=0.0, augment=False, seed=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_backdoor(tmp_path_factory):
    torch.manual_seed(0)
    train = tinted(480, 0)
    model = TinyClip()
    finetune_contrastive(model, caption_pairs(train), cfg(3, 3e-3))
    attack = create_attack("badnets", size=4, pattern="checker")
    out = tmp_path_factory.mktemp("clip") / "bd"
    made = backdoor_clip(model, train, attack, target=0, rate=0.1, config=cfg(4, 3e-3), out=out)
    test = tinted(200, 1)
    before = zero_shot_metrics(made.model, test, trigger=attack, target=0)
    assert before.clean_acc > 0.95 and before.asr > 0.95, before
    clean, val = tinted(160, 2).split(0.75, 0)
    return made, out, test, clean, val


def _after(made, out, test):
    return zero_shot_metrics(out.model, test, trigger=made.record.trigger, target=0)


def test_backdoored_artifact_reloads_with_its_attack(tiny_backdoor):
    from unbackdoor.attacks import load_attack

    made, out, test, _, _ = tiny_backdoor
    model, man = load_clip(out)
    record = load_attack(out)
    assert man.class_names == CLASSES and record.policy.target == 0
    m = zero_shot_metrics(model, test, trigger=record.trigger, target=0)
    assert m.asr > 0.95


def test_tbar_known_attack_removes_the_backdoor(tiny_backdoor):
    made, _, test, clean, val = tiny_backdoor
    d = create_defense("clip-tbar")
    out = d.run(copy.deepcopy(made.model), clean, val, known_attack=made.record)
    m = _after(made, out, test)
    assert m.asr <= 0.05 and m.clean_acc >= 0.95, m
    assert out.diagnostics["alpha"] > 0
    # the vector covered the image tower only: the text tower and the temperature are untouched
    for k, v in out.model.text.state_dict().items():
        assert torch.equal(v, made.model.text.state_dict()[k])
    assert torch.equal(out.model.logit_scale, made.model.logit_scale)
    assert all(p.requires_grad for p in out.model.parameters())  # frozen only while it ran


def test_unlearn_clip_artifact_writes_the_report_and_its_pictures(
    tiny_backdoor, tmp_path, monkeypatch
):
    """Like a classifier's, a purified CLIP directory holds report.json, attack.json and the
    defense's pictures (here TBAR's alpha sweep)."""
    import json

    import unbackdoor.clip.api as clip_api

    _, bd, _, _, _ = tiny_backdoor
    monkeypatch.setattr(clip_api, "_dataset_name", lambda man, given: "tinted")
    monkeypatch.setattr(clip_api, "_load", lambda name, split, man: tinted(200, 2))
    out = tmp_path / "purified"
    _, report = clip_api.unlearn_clip_artifact(
        bd, "clip-tbar", out=out, clean_samples=160, known_attack=True
    )
    assert "alpha_sweep" in report.images
    for name in report.images:
        assert (out / f"{name}.png").stat().st_size > 100
    assert json.loads((out / "report.json").read_text())["method"] == "clip-tbar"
    assert (out / "attack.json").is_file()
    with pytest.raises(ArtifactError, match="already holds a finished model"):
        clip_api.unlearn_clip_artifact(bd, "clip-tbar", out=out, known_attack=True)


def test_unlearn_clip_artifact_data_share_and_checkpoint(tiny_backdoor, tmp_path, monkeypatch):
    """A named data set gets the default 5%, a user's folder is used whole (as for classifiers),
    and a defense that checkpoints (clip-bibau) does so in OUT/.checkpoint, removed at the end."""
    import importlib

    import unbackdoor.clip.api as clip_api

    unlearn_mod = importlib.import_module("unbackdoor.unlearn")  # the package exports a function

    _, bd, _, _, _ = tiny_backdoor
    monkeypatch.setattr(clip_api, "_load", lambda name, split, man: tinted(400, 2))
    seen = {}

    def fake_unlearn(model, data, method, **kw):
        seen.update(n=len(data), ckpt=kw.get("checkpoint_dir"), templates=kw.get("templates"))
        if seen["ckpt"]:
            Path(seen["ckpt"]).mkdir(parents=True)
        return model, unlearn_mod.UnlearnReport(method, {}, len(data), 0, 0.0, None, False)

    monkeypatch.setattr(unlearn_mod, "unlearn", fake_unlearn)
    clip_api.unlearn_clip_artifact(bd, "clip-tbar", clean_data="mnist", out=tmp_path / "a")
    assert seen == {"n": 20, "ckpt": None, "templates": None}  # 5% of 400; TBAR: no checkpoint
    clip_api.unlearn_clip_artifact(bd, "clip-bibau", clean_data="/my/folder", out=tmp_path / "b")
    assert seen == {"n": 400, "ckpt": str(tmp_path / "b" / ".checkpoint"), "templates": None}
    assert not (tmp_path / "b" / ".checkpoint").exists()
    # a model evaluated with its own prompt templates is defended under the same head
    save_clip(TinyClip(), tmp_path / "t", class_names=CLASSES, templates=["a {} here."])
    clip_api.unlearn_clip_artifact(tmp_path / "t", "clip-tbar", clean_data="x", out=tmp_path / "c")
    assert seen["templates"] == ["a {} here."]
    clip_api.unlearn_clip_artifact(
        tmp_path / "t", "clip-tbar", clean_data="x", templates=["b {}."], out=tmp_path / "d"
    )
    assert seen["templates"] == ["b {}."]  # an explicit option wins


def test_cleanclip_lowers_asr(tiny_backdoor):
    made, _, test, clean, val = tiny_backdoor
    out = create_defense("cleanclip", epochs=10, lr=3e-3).run(copy.deepcopy(made.model), clean, val)
    m = _after(made, out, test)
    assert m.asr < 0.5 and m.clean_acc >= 0.9, m


@pytest.mark.slow
def test_tbar_unknown_attack_finds_the_target_and_lowers_asr(tiny_backdoor):
    made, _, test, clean, val = tiny_backdoor
    out = create_defense("clip-tbar", inversion_steps=100).run(
        copy.deepcopy(made.model), clean, val
    )
    m = _after(made, out, test)
    assert out.suspected_target == 0 and out.backdoor_found
    assert m.asr < 0.6 and m.clean_acc >= 0.95, m


@pytest.mark.slow
def test_bibau_multimodal_removes_the_backdoor(tiny_backdoor):
    made, _, test, clean, val = tiny_backdoor
    d = create_defense("clip-bibau", rounds=2, inversion_steps=100, outer_steps=20, inner_steps=10)
    model = copy.deepcopy(made.model)
    out = d.run(model, clean, val)
    m = _after(made, out, test)
    assert out.suspected_target == 0 and out.backdoor_found
    assert m.asr <= 0.1 and m.clean_acc >= 0.95, m
    assert all(p.requires_grad for p in model.parameters())  # the text tower is thawed again


def test_badclip_patch_points_at_the_target():
    torch.manual_seed(0)
    data = tinted(120, 3)
    model = TinyClip()
    finetune_contrastive(model, caption_pairs(data), cfg(2, 3e-3))
    attack = create_attack("badclip", size=4, steps=30)
    with pytest.raises(ConfigError, match="fit"):
        attack.apply(torch.rand(2, 3, 16, 16))
    attack.fit(data, model, target=0)
    others = data.subset(torch.nonzero(data.labels != 0).flatten()).float_images()
    head = zero_shot_classifier(model.eval(), CLASSES)
    with torch.no_grad():
        optimised = head(attack(others)).softmax(1)[:, 0].mean()
        checker = create_attack("badnets", size=4, pattern="checker")
        baseline = head(checker(others)).softmax(1)[:, 0].mean()
    assert optimised > baseline  # the patch already pulls images towards the target text
    assert set(attack.tensors()) == {"patch"} and "patch" not in attack.config()


def test_clip_defenses_refuse_classifiers():
    model = create_model("small_cnn", 4, in_channels=3, input_size=(16, 16))
    data = tinted(40, 0)
    with pytest.raises(ConfigError, match="CLIP models"):
        create_defense("cleanclip").run(model, data, data)


def test_clip_defenses_take_the_inversion_batch_as_an_option():
    from unbackdoor.defenses import create_defense
    from unbackdoor.errors import ConfigError

    for name in ("clip-bibau", "clip-tbar"):
        assert create_defense(name, inversion_batch_size=4).inversion_batch_size == 4
        with pytest.raises(ConfigError, match="inversion_batch_size"):
            create_defense(name, inversion_batch_size=0)


def test_retune_attack_on_clip_leaves_the_model_and_brings_asr(tiny_backdoor):
    from unbackdoor.clip.eval.retune import retune_clip
    from unbackdoor.eval.retune import RetuneConfig

    made, _, test, clean, _ = tiny_backdoor
    state = copy.deepcopy(made.model.state_dict())
    cfg = RetuneConfig(samples=100, poison_rate=0.1, epochs=1, lr=1e-3, batch_size=32)
    r = retune_clip(made.model, tinted(300, 5), test, made.record, cfg)
    assert r.config["poisoned"] == 10 and [p["step"] for p in r.curve] == [0, 4]
    assert r.before.asr > 0.95 and r.after.asr > 0.8, (r.before, r.after)  # still backdoored
    assert all(torch.equal(v, made.model.state_dict()[k]) for k, v in state.items())


def test_clip_bibau_refuses_the_classifier_only_mix_kl():
    from unbackdoor.defenses import create_defense
    from unbackdoor.errors import ConfigError

    with pytest.raises(ConfigError, match="mix_kl_weight"):
        create_defense("clip-bibau", mix_kl_weight=1.0)


def test_clip_defenses_keep_the_index_only_detection():
    from unbackdoor.defenses import create_defense

    for name in ("clip-bibau", "clip-tbar"):
        assert create_defense(name).strong_effect is None
        assert create_defense(name).min_fooling == 0
    assert create_defense("bibau").strong_effect == create_defense("tbar").strong_effect == 200
    assert create_defense("bibau").min_fooling == create_defense("tbar").min_fooling == 0.2
