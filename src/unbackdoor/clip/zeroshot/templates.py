"""Prompt templates: the zero-shot ensemble and the varied captions used for training pairs.

Prompt ensembling follows CLIP (Radford et al., ICML 2021, section 3.1.4): a class's text
embedding is the normalised mean of the embeddings of several templates filled with its name.
``CLASS_TEMPLATES`` is a subset of CLIP's CIFAR-10 templates; ``CAPTION_TEMPLATES`` are the
varied captions of image-caption pairs made from labelled images, disjoint from it so that
zero-shot accuracy is not measured on the very sentences the model was aligned with.
"""

from __future__ import annotations

from collections.abc import Sequence

from unbackdoor.errors import ConfigError

CLASS_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a pixelated photo of the {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a bad photo of the {}.",
    "a good photo of a {}.",
)

CAPTION_TEMPLATES: tuple[str, ...] = (
    "an image of a {}.",
    "a picture showing a {}.",
    "a {} in the picture.",
    "this is a {}.",
    "a small image of a {}.",
    "a snapshot of the {}.",
    "there is a {} here.",
    "a cropped photo of a {}.",
    "an old picture of a {}.",
    "the {}, photographed.",
    "a {}.",
    "my {}.",
)

# digits read better as words in a caption: "a photo of the number seven"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def fill(templates: Sequence[str], name: str) -> list[str]:
    """Every template filled with ``name``; a template without ``{}`` is an error naming it."""
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ConfigError(f"prompt template {bad[0]!r} has no '{{}}' for the class name")
    return [t.format(name) for t in templates]


def readable_class_names(class_names: Sequence[str]) -> list[str]:
    """Class names as a caption reads them: ``"7"`` -> ``"number seven"``, ``_`` -> space."""
    out = []
    for c in class_names:
        c = str(c)
        if c.isdigit() and len(c) == 1:
            out.append(f"number {DIGIT_NAMES[int(c)]}")
        else:
            out.append(c.replace("_", " "))
    return out
