"""Classifier architectures behind one registry, and safe save/load of model artifacts."""

from unbackdoor.models import fastnet as _fastnet  # noqa: F401  (registers "fastnet")
from unbackdoor.models import resnet as _resnet  # noqa: F401
from unbackdoor.models import small_cnn as _small_cnn  # noqa: F401
from unbackdoor.models.artifact import (
    Manifest,
    is_artifact,
    load_manifest,
    load_model,
    load_weights_file,
    save_model,
)
from unbackdoor.models.registry import (
    ModelSpec,
    Normalize,
    create_from_spec,
    create_model,
    list_models,
    register_model,
)

__all__ = [
    "Manifest",
    "ModelSpec",
    "Normalize",
    "create_model",
    "create_from_spec",
    "list_models",
    "register_model",
    "save_model",
    "load_model",
    "load_manifest",
    "load_weights_file",
    "is_artifact",
]
