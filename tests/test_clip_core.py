"""CLIP core (issue 7): interface, tiny model, zero-shot head, metrics, pairs, artifacts."""

from __future__ import annotations

import pytest
import torch

from unbackdoor.attacks import create_attack
from unbackdoor.clip import TinyClip, load_clip, save_clip, zero_shot_classifier
from unbackdoor.clip.data import CaptionedDataset, caption_pairs, poison_pairs
from unbackdoor.clip.eval import retrieval_recall, zero_shot_metrics
from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.model.tokenize import HashTokenizer
from unbackdoor.clip.train import contrastive_loss
from unbackdoor.data import ImageDataset
from unbackdoor.errors import ConfigError, DataError

COLOURS = ["red", "green", "blue"]


class ColourClip(ClipModel):
    """A constructed CLIP: an image embeds as its mean RGB, a caption as the colour it names."""

    kind = "constructed"

    def __init__(self) -> None:
        super().__init__(HashTokenizer(256, 8), (4, 4), mean=(0, 0, 0), std=(1, 1, 1))
        self.ids = torch.tensor([self.tokenizer.word_id(c) for c in COLOURS])

    def _encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens.unsqueeze(-1) == self.ids).any(1).float() + 1e-3


def colour_images(colours: list[int]) -> ImageDataset:
    x = torch.zeros(len(colours), 3, 4, 4, dtype=torch.uint8)
    for i, c in enumerate(colours):
        x[i, c] = 255
    return ImageDataset(x, torch.tensor(colours), list(COLOURS), "colours")


def test_zero_shot_accuracy_and_asr_on_a_constructed_case():
    model = ColourClip()
    data = colour_images([0, 1, 2, 0, 1, 2])
    labels = data.labels.clone()
    labels[5] = 1  # one image is labelled green but is blue: 5 of 6 correct
    data = ImageDataset(data.images, labels, list(COLOURS), "colours")

    def make_red(x, index=None):
        out = x.clone()
        out[:, 0] = 1.0
        out[:, 1:] = 0.0
        return out

    m = zero_shot_metrics(model, data, trigger=make_red, target=0)
    assert m.clean_acc == pytest.approx(5 / 6)
    assert m.asr == 1.0 and m.n_triggered == 4  # the two red images do not count
    head = zero_shot_classifier(model, COLOURS)
    assert head.text_weights.shape == (3, 3)
    assert torch.allclose(head.text_weights.norm(dim=1), torch.ones(3))


def test_retrieval_recall_on_a_constructed_case():
    model = ColourClip()
    data = colour_images([0, 1, 2, 2])
    pairs = CaptionedDataset(
        data.images, data.labels, list(COLOURS), "c", {}, ["red", "blue", "green", "red"]
    )
    r = retrieval_recall(model, pairs, ks=(1, 4))
    assert r.image_to_text[1] == pytest.approx(1 / 4)  # only the red image's caption is red
    assert r.image_to_text[4] == 1.0
    assert r.text_to_image[1] == pytest.approx(1 / 3)  # "red" finds a red image; the others miss
    assert r.text_to_image[4] == 1.0


def test_contrastive_loss_prefers_matching_pairs_and_groups():
    e = torch.eye(4)
    scale = torch.tensor(2.0)
    good = contrastive_loss(e, e, scale)
    bad = contrastive_loss(e, e.flip(0), scale)
    assert good < bad
    grouped = contrastive_loss(e, e, scale, groups=torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(grouped)


def test_tiny_clip_shapes_resizing_and_channels():
    m = TinyClip(image_size=16, embed_dim=8)
    assert m.encode_image(torch.rand(2, 3, 32, 32)).shape == (2, 8)  # resized inside
    assert m.encode_image(torch.rand(2, 1, 16, 16)).shape == (2, 8)  # grey -> RGB
    assert m.encode_texts(["a photo of a cat", "a dog"]).shape == (2, 8)
    with pytest.raises(DataError, match="list of captions"):
        m.encode_texts("a cat")
    assert all(k.startswith("visual.") for k in m.image_keys())


def test_non_square_images_are_cropped_about_the_centre_not_stretched():
    m = TinyClip(image_size=16, embed_dim=8)
    norm = lambda x: (x - m.pixel_mean) / m.pixel_std  # noqa: E731
    wide = torch.rand(2, 3, 16, 24)  # already covers 16 x 16: only the crop
    assert torch.equal(m.prepare_images(wide), norm(wide[..., :, 4:20]))
    tall = torch.rand(1, 3, 64, 32)  # halved to 32 x 16, then its middle 16 rows
    half = torch.nn.functional.interpolate(tall, size=(32, 16), mode="bilinear")
    assert torch.allclose(m.prepare_images(tall), norm(half[..., 8:24, :]))
    square = torch.rand(1, 3, 32, 32)  # the same aspect ratio: resized only, as before
    full = torch.nn.functional.interpolate(square, size=(16, 16), mode="bilinear")
    assert torch.allclose(m.prepare_images(square), norm(full))


def test_hash_tokenizer_layout_and_errors():
    tok = HashTokenizer(64, 6)
    ids = tok(["A photo of a very very long caption", "cat"])
    assert ids.shape == (2, 6)
    assert int(ids[0].argmax()) == 5 and int(ids[1].argmax()) == 2  # end token is the max id
    assert ids[1, 3:].eq(0).all()
    with pytest.raises(ConfigError, match="vocab_size"):
        HashTokenizer(4)


def test_caption_pairs_and_poisoning():
    x = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    data = ImageDataset(x, torch.arange(40) % 4, ["cat", "dog", "7", "car_wheel"], "d")
    pairs = caption_pairs(data, seed=1)
    named = list(zip(pairs.captions, pairs.labels.tolist(), strict=True))
    assert all("cat" in c for c, y in named if y == 0)
    assert all("number seven" in c for c, y in named if y == 2)
    assert all("car wheel" in c for c, y in named if y == 3)
    attack = create_attack("badnets", size=2)
    pp = poison_pairs(data, attack, target=1, rate=0.25, target_caption="a photo of a banana")
    idx = pp.poison_indices
    assert len(idx) == 10 and (pp.original_labels[idx] != 1).all()
    assert all(pp.data.captions[i] == "a photo of a banana" for i in idx.tolist())
    assert (pp.data.labels[idx] == 1).all()
    assert isinstance(pp.data.subset([0, 1]), CaptionedDataset)
    with pytest.raises(ConfigError, match="target=9"):
        poison_pairs(data, attack, target=9, rate=0.1)


def test_save_and_load_tiny_clip_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = TinyClip().eval()
    save_clip(m, tmp_path / "m", class_names=["a", "b"], templates=["a photo of a {}."])
    back, man = load_clip(tmp_path / "m")
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(back.encode_image(x), m.encode_image(x))
    assert torch.allclose(back.encode_texts(["a b"]), m.encode_texts(["a b"]))
    assert man.class_names == ["a", "b"] and man.kind == "tiny"


def test_feature_cache_memoises_rows_and_notices_changed_weights():
    import copy

    from unbackdoor.clip.pretrained import FeatureCache

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).eval()
    calls: list[int] = []

    def frozen(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return conv(x)

    cache = FeatureCache(max_items=100)
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        first = cache(frozen, x[:4], [conv])
        both = cache(frozen, x, [conv])  # rows 0-3 are known: only 2 new rows go through
        assert calls == [4, 2] and (cache.hits, cache.misses) == (4, 6)
        assert torch.allclose(both, conv(x), atol=1e-6) and torch.equal(both[:4], first)
        conv.weight.add_(1.0)  # other weights: nothing stale is read
        assert torch.allclose(cache(frozen, x[:2], [conv]), conv(x[:2]), atol=1e-6)
        assert calls[-1] == 2
    xg = x[:3].clone().requires_grad_(True)  # inversion: never cached, gradients flow
    cache(frozen, xg, [conv]).sum().backward()
    assert xg.grad is not None and calls[-1] == 3
    assert copy.deepcopy({"c": cache})["c"] is cache  # model copies share it
    with pytest.raises(ConfigError, match="max_items"):
        FeatureCache(max_items=0)


def test_feature_cache_saves_and_loads(tmp_path):
    from unbackdoor.clip.pretrained import FeatureCache

    conv = torch.nn.Conv2d(3, 2, 3).eval()
    a, b = FeatureCache(), FeatureCache()
    x = torch.rand(5, 3, 6, 6)
    with torch.no_grad():
        ref = a(conv, x, [conv])
    a.save(tmp_path / "f.safetensors")
    assert b.load(tmp_path / "f.safetensors") == 5
    with torch.no_grad():
        assert torch.equal(b(conv, x, [conv]), ref) and b.misses == 0
    with pytest.raises(ConfigError, match="empty"):
        FeatureCache().save(tmp_path / "g.safetensors")
