"""CLIP-style image-text models: loading, zero-shot evaluation, poisoning and defenses.

Contrastive image-text models follow CLIP (Radford et al., "Learning Transferable Visual Models
From Natural Language Supervision", ICML 2021, arXiv 2103.00020): an image tower and a text tower
map into one embedding space, and ``logit_scale * cos(image, text)`` scores a pair. Zero-shot
classification compares an image with the embeddings of class prompts.

- :mod:`unbackdoor.clip.model`: the :class:`ClipModel` interface, a tiny model for tests, the
  OpenAI/open_clip state-dict layout, the Hugging Face ``CLIPModel`` adapter, the offline
  pretrained model, and safe save/load;
- :mod:`unbackdoor.clip.zeroshot`: prompt templates and the zero-shot head;
- :mod:`unbackdoor.clip.eval`: zero-shot CA / ASR and retrieval recall@k;
- :mod:`unbackdoor.clip.data` and :mod:`unbackdoor.clip.attacks`: image-caption pairs and their
  poisoning (BadNets, Blended, WaNet, BadCLIP's optimised patch, Liang et al., CVPR 2024);
- :mod:`unbackdoor.clip.train`: contrastive fine-tuning through the one training loop;
- :mod:`unbackdoor.clip.defenses`: BI-BAU's multimodal mode, TBAR on the image encoder, and the
  CleanCLIP baseline (Bansal et al., ICCV 2023), registered with the other defenses.
"""

from unbackdoor.clip import attacks as _attacks  # noqa: F401  (registers "badclip")
from unbackdoor.clip.model import (
    ClipModel,
    HashTokenizer,
    OpenAIClip,
    TinyClip,
    load_clip,
    save_clip,
)
from unbackdoor.clip.zeroshot import (
    CLASS_TEMPLATES,
    ZeroShotClassifier,
    zero_shot_classifier,
)

__all__ = [
    "ClipModel",
    "HashTokenizer",
    "OpenAIClip",
    "TinyClip",
    "load_clip",
    "save_clip",
    "CLASS_TEMPLATES",
    "ZeroShotClassifier",
    "zero_shot_classifier",
]
