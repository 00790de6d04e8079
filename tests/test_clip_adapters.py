"""CLIP adapters (issue 7): Hugging Face CLIPModel directories and OpenAI/open_clip state dicts.

No CLIP weights can be downloaded here, so tiny random-initialised models are saved and loaded.
open_clip cannot be imported on this CPU torch (it imports torchvision, a CUDA build here), so
the OpenAI-layout loader is checked against an independent reference forward written from the
state dict with plain tensor operations (and a key-for-key round trip).
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from unbackdoor.clip import OpenAIClip, load_clip, save_clip
from unbackdoor.clip.model.openai import OpenAIConfig
from unbackdoor.clip.model.tokenize import FileTokenizer, HashTokenizer
from unbackdoor.errors import ArtifactError, UnsafeFileError

WORDS = ["a", "photo", "of", "the", "cat", "dog", "car", "."]


def write_tokenizer(path, context_length=16):
    """A word-level tokenizer.json with start/end tokens as the two largest ids."""
    tk = pytest.importorskip("tokenizers", reason="tokenizers (the [hf] extra) is not installed")
    from tokenizers import models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    sot, eot = len(vocab), len(vocab) + 1
    vocab.update({"<sot>": sot, "<eot>": eot})
    tok = tk.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<sot> $A <eot>", special_tokens=[("<sot>", sot), ("<eot>", eot)]
    )
    tok.save(str(path))
    return len(vocab), eot


# --- OpenAI / open_clip layout --------------------------------------------------------------
def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])


def _block(x, sd, p, heads, mask=None):
    n, length, w = x.shape
    h = _ln(x, sd, p + "ln_1")
    qkv = h @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]
    q, k, v = (t.reshape(n, length, heads, w // heads).transpose(1, 2) for t in qkv.chunk(3, -1))
    att = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
    if mask is not None:
        att = att + mask
    o = (att.softmax(-1) @ v).transpose(1, 2).reshape(n, length, w)
    x = x + o @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
    h = _ln(x, sd, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]


def reference_image(sd, x, cfg):
    """CLIP ViT forward from the raw state dict (x already normalised)."""
    t = F.conv2d(x, sd["visual.conv1.weight"], stride=cfg.patch_size).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    t = torch.cat([cls, t], 1) + sd["visual.positional_embedding"]
    t = _ln(t, sd, "visual.ln_pre")
    for i in range(cfg.vision_layers):
        t = _block(t, sd, f"visual.transformer.resblocks.{i}.", cfg.vision_heads)
    return _ln(t[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def reference_text(sd, tokens, cfg):
    t = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    length = tokens.shape[1]
    mask = torch.full((length, length), float("-inf")).triu(1)
    for i in range(cfg.text_layers):
        t = _block(t, sd, f"transformer.resblocks.{i}.", cfg.text_heads, mask)
    t = _ln(t, sd, "ln_final")
    return t[torch.arange(t.shape[0]), tokens.argmax(-1)] @ sd["text_projection"]


TINY = dict(
    embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2,
    vision_heads=2, context_length=16, text_width=32, text_layers=2, text_heads=2,
)  # fmt: skip


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_openai_state_dict_matches_an_independent_reference(tmp_path, fmt):
    vocab, _ = write_tokenizer(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    cfg = OpenAIConfig(**TINY, vocab_size=vocab)
    src = OpenAIClip(cfg, FileTokenizer(tmp_path / "tokenizer.json", 16)).eval()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    weights = tmp_path / f"clip.{fmt}"
    if fmt == "pt":  # as OpenAI ships them, with the non-weight entries of its archives
        torch.save({**sd, "input_resolution": torch.tensor(32)}, weights)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(weights))
    model, man = load_clip(weights, vision_heads=2, text_heads=2)
    assert man.kind == "openai" and model.cfg == cfg
    assert set(model.state_dict()) == set(sd)  # the OpenAI / open_clip key layout
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode_image(x)
        ref = reference_image(sd, model.prepare_images(x), cfg)
        assert torch.allclose(ours, ref, atol=1e-5)
        tokens = model.tokenizer(["a photo of a cat .", "the dog", "car"])
        assert tokens[0, 0] == vocab - 2 and tokens[2].argmax() == 2  # <sot> car <eot>
        assert torch.allclose(model.encode_text(tokens), reference_text(sd, tokens, cfg), atol=1e-5)
    # a CLIP artifact written from it reloads identically (tokenizer copied alongside)
    save_clip(model, tmp_path / "art")
    back, _ = load_clip(tmp_path / "art")
    assert torch.allclose(back.encode_image(x), ours, atol=1e-6)


def test_cli_evaluates_and_purifies_raw_openai_weights(tmp_path, capsys):
    """An OpenAI / open_clip weights file goes to ``evaluate`` and ``unlearn`` as it is, like a
    CLIP artifact (heads at width / 64, the OpenAI convention, so nothing else is needed)."""
    import json

    from safetensors.torch import save_file

    from unbackdoor.cli import main

    vocab, _ = write_tokenizer(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    cfg = OpenAIConfig(**{**TINY, "vision_width": 64, "vision_heads": 1}, vocab_size=vocab)
    cfg = OpenAIConfig(**{**cfg.__dict__, "text_width": 64, "text_heads": 1})
    src = OpenAIClip(cfg, FileTokenizer(tmp_path / "tokenizer.json", 16))
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    assert main(["evaluate", str(weights)]) == 2
    assert "pass --dataset" in capsys.readouterr().err
    assert main(["evaluate", str(weights), "--dataset", "mnist", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["kind"] == "openai" and out["n_clean"] == 10000
    purified = tmp_path / "purified"
    args = ["unlearn", str(weights), "--method", "cleanclip", "--clean-data", "mnist"]
    args += ["--clean-samples", "100", "--option", "epochs=1", "--out", str(purified)]
    assert main(args) == 0
    assert (purified / "clip.json").is_file() and (purified / "report.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(purified), "--json"]) == 0  # the data set was recorded
    back = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert back["n_clean"] == 10000


def test_openai_loader_errors(tmp_path):
    torch.manual_seed(0)
    cfg = OpenAIConfig(**TINY, vocab_size=64)
    sd = OpenAIClip(cfg, HashTokenizer(64, 16)).state_dict()
    torch.save(sd, tmp_path / "clip.pt")
    with pytest.raises(ArtifactError, match="needs a tokenizer"):
        load_clip(tmp_path / "clip.pt")
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "rn.pt")
    with pytest.raises(ArtifactError, match="ResNet"):
        load_clip(tmp_path / "rn.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"visual.conv1.weight": Evil()}))
    with pytest.raises(UnsafeFileError):
        load_clip(tmp_path / "evil.pt")
    # OpenAI's released .pt files are TorchScript archives: said so, not "corrupt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "jit.pt"))
    with pytest.raises(ArtifactError, match="TorchScript archive"):
        load_clip(tmp_path / "jit.pt")


def test_openai_loader_reads_sizes_gelu_and_context_from_what_the_user_brings(tmp_path):
    """A truncated state dict names what it lacks; an explicit tokenizer path takes the text
    tower's context length; open_clip's config beside the weights decides the GELU."""
    import json

    vocab, _ = write_tokenizer(tmp_path / "tok.json")
    torch.manual_seed(0)
    cfg = OpenAIConfig(**TINY, vocab_size=vocab)
    sd = OpenAIClip(cfg, HashTokenizer(vocab, 16)).state_dict()
    (tmp_path / "m").mkdir()
    weights = tmp_path / "m" / "clip.pt"
    torch.save({k: v for k, v in sd.items() if k != "ln_final.weight"}, weights)
    with pytest.raises(ArtifactError, match="lacks ln_final.weight"):
        load_clip(weights, tokenizer=tmp_path / "tok.json")
    torch.save(sd, weights)
    model, _ = load_clip(weights, tokenizer=tmp_path / "tok.json")  # 16 tokens, not 77
    assert model.tokenizer.context_length == 16 and model.cfg.quick_gelu  # OpenAI's default
    sidecar = tmp_path / "m" / "open_clip_config.json"
    for written, expected in [({}, False), ({"quick_gelu": True}, True)]:
        sidecar.write_text(json.dumps({"model_cfg": {"embed_dim": 16, **written}}))
        model, _ = load_clip(weights, tokenizer=tmp_path / "tok.json")
        assert model.cfg.quick_gelu is expected
    model, _ = load_clip(weights, tokenizer=tmp_path / "tok.json", quick_gelu=True)
    assert model.cfg.quick_gelu  # an explicit choice wins
    sidecar.write_text(json.dumps({"model_cfg": {"quick_gelu": "yes"}}))
    with pytest.raises(ArtifactError, match="quick_gelu='yes'"):
        load_clip(weights, tokenizer=tmp_path / "tok.json")


# --- Hugging Face transformers ------------------------------------------------------------------
@pytest.mark.slow  # importing transformers alone takes 20-30 s on this project's CPU machines
def test_hf_clip_directory_gives_the_source_embeddings(tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers (the [hf] extra) is not installed"
    )
    vocab, eot = write_tokenizer(tmp_path / "tokenizer.json")
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=16, eos_token_id=eot,
            bos_token_id=eot - 1, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    src = transformers.CLIPModel(cfg).eval()
    out = tmp_path / "hf"
    src.save_pretrained(out)
    (out / "tokenizer.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
    model, man = load_clip(out)
    assert man.kind == "hf"
    x = torch.rand(2, 3, 32, 32)
    tokens = model.tokenizer(["a photo of a cat .", "the dog"])
    with torch.no_grad():
        want_img = src.visual_projection(
            src.vision_model(pixel_values=model.prepare_images(x)).pooler_output
        )
        want_txt = src.text_projection(src.text_model(input_ids=tokens).pooler_output)
        assert torch.allclose(model.encode_image(x), want_img, atol=1e-5)
        assert torch.allclose(model.encode_text(tokens), want_txt, atol=1e-5)
    assert model.logit_scale is src.logit_scale or torch.equal(model.logit_scale, src.logit_scale)
    assert all(k.startswith("hf.vision_model.") or "visual_projection" in k
               for k in model.image_keys())  # fmt: skip
    save_clip(model, tmp_path / "art")
    back, _ = load_clip(tmp_path / "art")
    assert torch.allclose(back.encode_image(x), model.encode_image(x), atol=1e-6)
