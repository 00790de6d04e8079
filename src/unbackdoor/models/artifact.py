"""Model artifacts: a directory with ``model.safetensors`` and ``manifest.json``.

Loading never unpickles untrusted data. Weights are read from safetensors; a ``.pt``/``.pth``
file (what hubs often ship) is read only with ``torch.load(weights_only=True)``, and a pickle
that tries to call anything is refused with :class:`UnsafeFileError`. Every mismatch between the
manifest and the weights (shapes, class count, missing tensors, NaNs) is an error naming it.
Files are written atomically, weights before the manifest, so a directory with a manifest always
has the weights it describes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unbackdoor.errors import ArtifactError, UnsafeFileError
from unbackdoor.models.registry import ModelSpec, create_from_spec
from unbackdoor.utils.io import atomic_write, atomic_write_json, read_json
from unbackdoor.utils.runinfo import library_versions

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What a model directory says about its model."""

    spec: ModelSpec
    class_names: list[str]
    dataset: str | None = None
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "architecture": self.spec.to_dict(),
            "num_classes": self.spec.num_classes,
            "input_size": [self.spec.in_channels, *self.spec.input_size],
            "class_names": list(self.class_names),
            "dataset": self.dataset,
            "seed": self.seed,
            "versions": self.versions,
            "created": self.created,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        try:
            spec = ModelSpec.from_dict(d["architecture"])
            class_names = [str(c) for c in d["class_names"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: missing or malformed field ({e!r})") from None
        if int(d.get("num_classes", spec.num_classes)) != spec.num_classes:
            raise ArtifactError(
                f"{where}: num_classes={d['num_classes']} but the architecture has "
                f"{spec.num_classes} classes"
            )
        if len(class_names) != spec.num_classes:
            raise ArtifactError(
                f"{where}: {len(class_names)} class names for a model with "
                f"{spec.num_classes} classes"
            )
        return cls(
            spec=spec,
            class_names=class_names,
            dataset=d.get("dataset"),
            seed=d.get("seed"),
            versions=dict(d.get("versions", {})),
            created=str(d.get("created", "")),
            extra=dict(d.get("extra", {})),
        )


def is_artifact(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / MANIFEST).is_file() and (d / WEIGHTS).is_file()


def weights_digest(directory: str | Path, n: int = 16) -> str:
    """The first ``n`` hex digits of the SHA-256 of the artifact's weights file.

    Two trainings of the same config on different CPUs give different weights; a benchmark row
    records this digest so that rows made on different trainings are never compared unawares.
    """
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {WEIGHTS}, so no weights digest")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def model_spec(model: nn.Module) -> ModelSpec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ArtifactError("this model was not built by unbackdoor.create_model: it has no .spec")
    return spec


def save_model(
    model: nn.Module,
    directory: str | Path,
    *,
    class_names: list[str],
    dataset: str | None = None,
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``manifest.json`` into ``directory`` (atomically each)."""
    from safetensors.torch import save_file

    spec = model_spec(model)
    if len(class_names) != spec.num_classes:
        raise ArtifactError(
            f"{len(class_names)} class names given for a model with {spec.num_classes} classes"
        )
    state = _plain_state_dict(model)
    _check_finite(state, "model to save")
    directory = Path(directory)
    atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p)))
    manifest = Manifest(spec, list(class_names), dataset, seed, extra=dict(extra or {}))
    atomic_write_json(directory / MANIFEST, manifest.to_dict())
    return directory


def load_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise ArtifactError(f"{directory}: no such model directory")
    if not path.is_file():
        raise ArtifactError(f"{directory}: not a model directory (no {MANIFEST})")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return Manifest.from_dict(data, str(path))


def load_model(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Manifest]:
    """Rebuild the model of an artifact directory and load its weights safely (eval mode)."""
    manifest = load_manifest(directory)
    model = create_from_spec(manifest.spec)
    state = load_weights_file(Path(directory) / WEIGHTS)
    load_state_checked(model, state, str(Path(directory) / WEIGHTS))
    return model.to(device).eval(), manifest


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or a ``.pt``/``.pth``/``.bin`` without running code."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"{path}: refused to load: the file would run code or build objects other than tensors "
            f"when unpickled ({str(e).splitlines()[0][:200]}). Convert it to safetensors from a "
            "trusted environment."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        if _is_torchscript(path):
            raise ArtifactError(
                f"{path}: a TorchScript archive (as OpenAI released its CLIP .pt files), not a "
                "state dict: it carries code, so it is not loaded here. In a trusted "
                "environment, torch.jit.load it and save its state_dict() with safetensors."
            ) from None
        raise ArtifactError(f"{path}: corrupt or truncated weights file ({e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a zip archive holding TorchScript code (``<name>/code/...``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model``; a missing, extra, misshapen or NaN tensor is an error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise ArtifactError(
            f"{where}: weights do not match the manifest's architecture: " + "; ".join(parts)
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ArtifactError(
                f"{where}: tensor {k!r} has shape {tuple(state[k].shape)}, the manifest's "
                f"architecture expects {tuple(v.shape)}"
                + (
                    " (class count mismatch?)"
                    if v.ndim and v.shape[0] == _num_classes(model)
                    else ""
                )
            )
    _check_finite(state, where)
    model.load_state_dict(state)


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ArtifactError(f"{where}: non-finite values (NaN or inf) in {_few(bad)}")


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _num_classes(model: nn.Module) -> int:
    spec = getattr(model, "spec", None)
    return spec.num_classes if isinstance(spec, ModelSpec) else -1


__all__ = [
    "Manifest",
    "save_model",
    "load_model",
    "load_manifest",
    "load_weights_file",
    "load_state_checked",
    "is_artifact",
    "model_spec",
]
