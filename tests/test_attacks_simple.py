"""Blended, SIG, LF, BppAttack and Adaptive-Blend: shapes, determinism, storage, paper specifics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unbackdoor.attacks import (
    AttackRecord,
    LabelPolicy,
    create_attack,
    load_attack,
    poison_dataset,
    save_attack,
)
from unbackdoor.data import ImageDataset
from unbackdoor.errors import ConfigError

NAMES = ["blended", "sig", "lf", "bpp", "adaptive_blend"]
SEEDED = ["blended", "lf", "adaptive_blend"]  # the others are deterministic, seed-free triggers
SHAPES = [(5, 3, 32, 32), (5, 1, 28, 28)]


def batch(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def dataset(n: int = 200, classes: int = 10, shape=(3, 16, 16), seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], "toy")


def all_outputs(attack, x: torch.Tensor) -> list[torch.Tensor]:
    idx = torch.arange(x.shape[0]) + 100
    y = torch.zeros(x.shape[0], dtype=torch.long)
    outs = [attack.apply(x, idx), attack.poison_images(x, idx, y)]
    cover = attack.cover_images(x, idx)
    return outs if cover is None else [*outs, cover]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_shape_range_dtype_and_change(name, shape):
    attack = create_attack(name, seed=1)
    x = batch(shape)
    for out in all_outputs(attack, x):
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert (out - x).abs().mean() > 0


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name):
    x = batch(SHAPES[0])
    a, b = create_attack(name, seed=4), create_attack(name, seed=4)
    for oa, ob in zip(all_outputs(a, x), all_outputs(b, x), strict=True):
        assert torch.equal(oa, ob)
    if name in SEEDED:
        other = create_attack(name, seed=5)
        assert not torch.equal(a.apply(x), other.apply(x))


@pytest.mark.parametrize("name", NAMES)
def test_config_roundtrip_and_store(name, tmp_path):
    attack = create_attack(name, seed=2)
    x = batch(SHAPES[0], seed=1)
    expected = all_outputs(attack, x)
    cfg = attack.config()
    assert cfg.pop("name") == name
    rebuilt = create_attack(name, **cfg)
    assert rebuilt.config() == attack.config()
    for a, b in zip(expected, all_outputs(rebuilt, x), strict=True):
        assert torch.equal(a, b)
    save_attack(tmp_path, AttackRecord(attack, LabelPolicy(attack.policy, 0, 10), 0.05, [1, 2]))
    loaded = load_attack(tmp_path).attack
    assert loaded.config() == attack.config()
    for a, b in zip(expected, all_outputs(loaded, x), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("blended", "alpha", 1.5),
        ("blended", "pattern", "kitty"),
        ("sig", "delta_train", -0.1),
        ("sig", "frequency", 0),
        ("lf", "epsilon", 0.0),
        ("lf", "steps", -1),
        ("bpp", "squeeze_num", 1),
        ("bpp", "neg_ratio", 1.0),
        ("adaptive_blend", "pieces", 15),
        ("adaptive_blend", "mask_rate", 1.0),
        ("adaptive_blend", "alpha_test", 0.0),
    ],
)
def test_validation_names_the_field(name, key, value):
    with pytest.raises(ConfigError, match=f"{key}="):
        create_attack(name, **{key: value})


# --- Blended ------------------------------------------------------------------------------------
def test_blended_is_the_alpha_blend_of_a_stored_noise_pattern():
    a = create_attack("blended")
    x = batch((2, 3, 8, 8))
    out = a.apply(x)
    p = a.tensors()["pattern"]
    assert p.shape == (3, 8, 8) and p.min() >= 0 and p.max() <= 1
    assert torch.allclose(out, 0.8 * x + 0.2 * p)
    strong = create_attack("blended", alpha_test=0.5)
    assert torch.allclose(strong.apply(x), 0.5 * x + 0.5 * strong.tensors()["pattern"])
    assert torch.allclose(strong.poison_images(x, torch.arange(2), torch.zeros(2)), out)


def test_blended_supplied_pattern_tensor_and_png(tmp_path):
    from PIL import Image

    pic = torch.zeros(3, 40, 40)
    pic[0] = 1.0  # a red picture
    Image.fromarray((pic.permute(1, 2, 0) * 255).byte().numpy()).save(tmp_path / "p.png")
    from_file = create_attack("blended", pattern_file=str(tmp_path / "p.png"), alpha=0.5)
    assert from_file.pattern == "image"
    x = torch.zeros(1, 3, 32, 32)
    assert torch.allclose(from_file.apply(x)[0, 0], torch.full((32, 32), 0.5), atol=1e-4)
    assert from_file.apply(x)[0, 1:].abs().max() < 1e-4
    grey = from_file.apply(torch.zeros(1, 1, 28, 28))
    assert torch.allclose(grey, torch.full_like(grey, 0.5 * 0.299), atol=1e-3)

    a = create_attack("blended")
    a.set_pattern(torch.linspace(0, 1, 64).view(1, 8, 8))
    out = a.apply(batch((2, 3, 16, 16)))
    save_attack(tmp_path / "s", AttackRecord(a, LabelPolicy("all_to_one", 0, 10), 0.1))
    loaded = load_attack(tmp_path / "s").attack
    assert loaded.pattern == "image"
    assert torch.equal(loaded.apply(batch((2, 3, 16, 16))), out)
    with pytest.raises(ConfigError, match="pattern='image'"):
        create_attack("blended", pattern="image").apply(x)
    with pytest.raises(ConfigError, match="does not exist"):
        create_attack("blended", pattern_file=str(tmp_path / "missing.png")).apply(x)


# --- SIG ----------------------------------------------------------------------------------------
def test_sig_is_a_horizontal_sinusoid_with_train_and_test_strengths():
    a = create_attack("sig", delta_train=20 / 255, delta_test=40 / 255)
    x = torch.full((1, 3, 8, 32), 0.5)
    test = a.apply(x) - x
    train = a.poison_images(x, torch.arange(1), torch.zeros(1)) - x
    j = torch.arange(32, dtype=torch.float64)
    expected = (40 / 255 * torch.sin(2 * torch.pi * j * 6 / 32)).float()
    assert torch.allclose(test[0, 0, 0], expected, atol=1e-6)
    assert torch.equal(test[:, :, :1].expand_as(test), test)  # same on every row and channel
    assert torch.allclose(train, test / 2, atol=1e-6)


def test_sig_poisons_only_the_target_class_and_keeps_labels():
    data = dataset(n=400, classes=10)
    attack = create_attack("sig")
    assert attack.policy == "clean_label" and attack.default_rate <= 1 / 10
    policy = LabelPolicy(attack.policy, 3, 10)
    p = poison_dataset(data, attack, policy, attack.default_rate, seed=0)
    idx = p.poison_indices
    assert idx.numel() == round(attack.default_rate * len(data))
    assert (data.labels[idx] == 3).all()
    assert torch.equal(p.data.labels, data.labels)
    assert not torch.equal(p.data.images[idx], data.images[idx])
    clean = ~p.is_poisoned
    assert torch.equal(p.data.images[clean], data.images[clean])


# --- LF -----------------------------------------------------------------------------------------
def high_frequency_share(v: torch.Tensor) -> float:
    spec = torch.fft.fft2(v).abs() ** 2
    f = torch.fft.fftfreq(v.shape[-1]).abs()
    high = (f.view(-1, 1) > 0.15) | (f.view(1, -1) > 0.15)
    return float(spec[..., high].sum() / spec.sum())


def test_lf_pattern_is_smooth_and_within_budget():
    a = create_attack("lf", epsilon=0.08)
    x = batch((2, 3, 32, 32))
    v = a.apply(x) - x  # x in [0.1, 0.9]: no clipping
    assert v.abs().max() <= 0.08 + 1e-6 and v.abs().max() > 0.07
    assert high_frequency_share(v[0]) < 1e-3
    noise = torch.rand(3, 32, 32) - 0.5
    assert high_frequency_share(noise) > 0.5


def test_lf_fit_optimises_a_lowpass_universal_perturbation(tmp_path):
    data = dataset(n=64, classes=4, shape=(1, 12, 12))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 4))
    a = create_attack("lf", steps=15, batch_size=16, seed=3)
    generated = a.generated_pattern(1, 12, 12)
    x = data.images.float() / 255
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(a.apply(x)), torch.full((64,), 2))
    a.fit(data, model, target=2)
    fitted = a.tensors()["pattern"]
    assert not torch.equal(fitted, generated)
    assert fitted.abs().max() <= a.epsilon + 1e-6
    with torch.no_grad():
        after = nn.functional.cross_entropy(model(a.apply(x)), torch.full((64,), 2))
    assert after < before
    save_attack(tmp_path, AttackRecord(a, LabelPolicy("all_to_one", 2, 4), 0.1))
    assert torch.equal(load_attack(tmp_path).attack.apply(x), a.apply(x))
    a.fit(data, None)  # without a model: back to the generated pattern
    assert torch.equal(a.tensors()["pattern"], generated)


# --- BppAttack ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dithering", [False, True])
def test_bpp_output_lies_on_squeeze_num_levels(dithering):
    a = create_attack("bpp", squeeze_num=8, dithering=dithering)
    x = batch((3, 3, 16, 16))
    out = a.apply(x)
    for c in range(3):
        assert out[:, c].unique().numel() <= 8
    levels = out * 7
    assert torch.allclose(levels, levels.round(), atol=1e-5)


def test_bpp_dithering_keeps_the_local_mean():
    x = torch.full((2, 3, 16, 16), 128 / 255)
    plain = create_attack("bpp").apply(x)
    dithered = create_attack("bpp", dithering=True).apply(x)
    assert abs(float(plain.mean()) - 128 / 255) > 0.05
    assert abs(float(dithered.mean()) - 128 / 255) < 0.01
    assert dithered.unique().numel() == 2  # the two levels around 0.5


def test_bpp_negative_samples_carry_another_images_residual():
    a = create_attack("bpp")
    x = batch((4, 3, 8, 8))
    idx = torch.arange(4)
    neg = a.cover_images(x, idx)
    residual = a.apply(x) - x
    moved = neg - x
    own = [torch.allclose(moved[i], residual[i], atol=1e-6) for i in range(4)]
    assert not any(own)
    assert a.suggested_cover_rate(0.1) == pytest.approx(0.1)
    assert create_attack("bpp", neg_ratio=0.0).cover_images(x, idx) is None
    single = a.cover_images(x[:1], idx[:1])
    assert single.shape == (1, 3, 8, 8) and not torch.allclose(single, a.apply(x[:1]))


# --- Adaptive-Blend -----------------------------------------------------------------------------
def changed_pieces(out: torch.Tensor, x: torch.Tensor, k: int = 4) -> torch.Tensor:
    n, _, h, w = x.shape
    d = (out - x).abs().sum(1).view(n, k, h // k, k, w // k).sum((2, 4))
    return (d > 0).view(n, -1)


@pytest.mark.parametrize("shape", [(6, 3, 32, 32), (6, 1, 28, 28)])
def test_adaptive_blend_uses_half_the_pieces_in_training_and_all_at_test(shape):
    a = create_attack("adaptive_blend", seed=1)
    assert (a.alpha, a.alpha_test, a.pieces, a.mask_rate) == (0.15, 0.2, 16, 0.5)
    assert a.default_rate == 0.003 and a.suggested_cover_rate(0.003) == pytest.approx(0.003)
    x = torch.zeros(shape)
    idx = torch.arange(6)
    poisoned = a.poison_images(x, idx, torch.zeros(6, dtype=torch.long))
    cover = a.cover_images(x, idx)
    full = a.apply(x, idx)
    assert (changed_pieces(poisoned, x).sum(1) == 8).all()
    assert (changed_pieces(cover, x).sum(1) == 8).all()
    assert changed_pieces(full, x).all()
    assert len({tuple(r.tolist()) for r in changed_pieces(poisoned, x)}) > 1
    pattern = a.tensors()["pattern"]
    assert torch.allclose(full, 0.2 * pattern.expand_as(full))
    kept = changed_pieces(poisoned, x)[0].view(4, 4)
    r, c = (int(v) for v in torch.nonzero(kept)[0])
    ph, pw = shape[2] // 4, shape[3] // 4
    piece = (slice(None), slice(r * ph, (r + 1) * ph), slice(c * pw, (c + 1) * pw))
    assert torch.allclose(poisoned[0][piece], 0.15 * pattern[piece])
    # the pieces follow the sample's index, not its place in the batch
    again = a.poison_images(x[:2], idx[[4, 1]], torch.zeros(2, dtype=torch.long))
    assert torch.equal(again, poisoned[[4, 1]])


def test_adaptive_blend_poisons_with_cover_samples_at_ten_percent():
    data = dataset(n=200, classes=10, shape=(3, 16, 16))
    a = create_attack("adaptive_blend")
    rate = 0.1
    p = poison_dataset(
        data, a, LabelPolicy("all_to_one", 0, 10), rate, cover_rate=a.suggested_cover_rate(rate)
    )
    assert int(p.is_poisoned.sum()) == 20 and int(p.is_cover.sum()) == 20
    assert (p.data.labels[p.is_poisoned] == 0).all()
    assert torch.equal(p.data.labels[p.is_cover], data.labels[p.is_cover])
    assert not torch.equal(p.data.images[p.is_cover], data.images[p.is_cover])
