"""Unlearning a backdoor: ``clean, report = unbackdoor.unlearn(model, clean_data, method=...)``.

This is where every defense is run the same way: the input model is copied (never modified),
the defender's clean data is split into the part the method trains on and a held-out part for
the method's own choices, and the wall time, peak memory and samples used are recorded.
``unlearn_artifact`` does the same for a model directory and writes the purified artifact,
``report.json`` and the pictures of any trigger the method found.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.defenses.registry import create_defense
from unbackdoor.errors import DataError
from unbackdoor.utils.runinfo import resolve_device, run_info, seed_everything


@dataclass
class UnlearnReport:
    """Everything a defense run reports (written as ``report.json``)."""

    method: str
    config: dict[str, Any]
    clean_samples_used: int
    val_samples: int
    wall_time: float
    peak_memory_mb: float | None
    known_attack: bool
    suspected_target: int | None = None
    backdoor_found: bool | None = None
    anomaly_score: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("images")
        return d


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak resident set size
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def split_defender_data(
    clean_data: ImageDataset, val_fraction: float, seed: int
) -> tuple[ImageDataset, ImageDataset]:
    """The defender's data split into (train, held-out), stratified and seeded."""
    if len(clean_data) < 10:
        raise DataError(
            f"{clean_data.name}: {len(clean_data)} clean samples are too few "
            "(at least 10 are needed)"
        )
    val, train = clean_data.split(val_fraction, seed)
    return train, val


def unlearn(
    model: nn.Module,
    clean_data: ImageDataset,
    method: str = "bibau",
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    known_attack: Any = None,
    device: str = "auto",
    **config: Any,
) -> tuple[nn.Module, UnlearnReport]:
    """Purify ``model`` with ``method`` using only ``clean_data``; returns ``(model, report)``.

    ``known_attack`` (an :class:`~unbackdoor.attacks.AttackRecord`) is only for methods that
    support the "known attack" setting, and the report says it was used.
    """
    defense = create_defense(method, seed=seed, device=device, **config)
    if known_attack is not None and not defense.known_attack_capable:
        raise DataError(f"defense {method!r} has no known-attack mode")
    spec = getattr(model, "spec", None)
    if spec is not None and spec.num_classes != clean_data.num_classes:
        raise DataError(
            f"{clean_data.name}: {clean_data.num_classes} classes but the model "
            f"has {spec.num_classes}"
        )
    dev = resolve_device(device)
    train_part, val_part = split_defender_data(clean_data, val_fraction, seed)
    seed_everything(seed)
    work = copy.deepcopy(model).to(dev)
    _reset_peak_memory(dev)
    t0 = time.perf_counter()
    out = defense.run(work, train_part, val_part, known_attack=known_attack)
    wall = time.perf_counter() - t0
    report = UnlearnReport(
        method=method,
        config=defense.config(),
        clean_samples_used=len(clean_data),
        val_samples=len(val_part),
        wall_time=wall,
        peak_memory_mb=_peak_memory_mb(dev),
        known_attack=known_attack is not None,
        suspected_target=out.suspected_target,
        backdoor_found=out.backdoor_found,
        anomaly_score=out.anomaly_score,
        diagnostics=out.diagnostics,
        run=run_info(seed),
        images=out.images,
    )
    out.model.eval()
    return out.model, report


def defender_data(
    manifest: Any,
    clean_data: str | ImageDataset | None,
    clean_samples: int | None,
    clean_fraction: float,
    seed: int,
) -> ImageDataset:
    """The defender's clean data: a seeded subset of a training split (``clean_fraction`` of
    it unless ``clean_samples`` is given), or a folder, used whole unless ``clean_samples``."""
    from unbackdoor.data.registry import load_dataset

    if isinstance(clean_data, ImageDataset):
        data = clean_data
    else:
        name = clean_data or manifest.dataset
        if not name:
            raise DataError("the model's manifest names no data set: pass --clean-data")
        spec = manifest.spec
        data = load_dataset(
            name,
            "train",
            class_names=manifest.class_names,
            image_size=tuple(spec.input_size),
            channels=spec.in_channels,
        )
        return defender_subset(data, clean_data, clean_samples, clean_fraction, seed)
    return defender_subset(data, clean_data, clean_samples, clean_fraction, seed, whole=True)


def defender_subset(
    data: ImageDataset,
    clean_data: Any,
    clean_samples: int | None,
    clean_fraction: float,
    seed: int,
    *,
    whole: bool = False,
) -> ImageDataset:
    """The seeded part of ``data`` a defense gets: ``clean_samples`` images if given; else
    ``clean_fraction`` of a registered data set's training split (``clean_data`` None or a
    registered name), and a user's folder (or ``whole``) as it is."""
    from unbackdoor.data.registry import DATASETS

    if clean_samples is None and not whole and (clean_data is None or clean_data in DATASETS):
        clean_samples = max(10, round(clean_fraction * len(data)))
    if clean_samples is None:
        return data
    if clean_samples > len(data):
        raise DataError(
            f"{data.name}: asked for {clean_samples} clean samples, only {len(data)} exist"
        )
    return data.sample(clean_samples, seed + 7919)


def checkpoint_into(out_dir: Path | None, method: str, config: dict[str, Any]) -> Path | None:
    """Point a defense that checkpoints (BI-BAU: after every round) at ``out_dir/.checkpoint``
    unless ``config`` names a ``checkpoint_dir``; returns that folder, to remove once the
    artifact is written (None: nothing to remove)."""
    from unbackdoor.api import CHECKPOINT_DIR

    if out_dir is None or "checkpoint_dir" in config or not _checkpoints(method):
        return None
    config["checkpoint_dir"] = str(out_dir / CHECKPOINT_DIR)
    return out_dir / CHECKPOINT_DIR


def unlearn_artifact(
    directory: str | Path,
    method: str = "bibau",
    *,
    out: str | Path | None = None,
    clean_data: str | ImageDataset | None = None,
    clean_samples: int | None = None,
    clean_fraction: float = 0.05,
    seed: int = 0,
    known_attack: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    **config: Any,
) -> tuple[nn.Module, UnlearnReport]:
    """Purify the model in ``directory``; with ``out`` write the artifact and ``report.json``.

    The method never reads ``attack.json`` unless ``known_attack`` is set; the purified artifact
    carries the input's ``attack.json`` over unchanged so that ``evaluate`` measures its ASR.
    With ``out``, a method that checkpoints (BI-BAU: after every round) does so in
    ``out/.checkpoint`` unless ``checkpoint_dir`` is given: the same call after an
    interruption resumes there, and the folder goes once the artifact is written.
    """
    from unbackdoor.api import prepare_out
    from unbackdoor.attacks.store import copy_attack, load_attack
    from unbackdoor.models import load_model, save_model
    from unbackdoor.utils.io import atomic_write_json

    model, manifest = load_model(directory)
    data = defender_data(manifest, clean_data, clean_samples, clean_fraction, seed)
    record = load_attack(directory) if known_attack else None
    out_dir = prepare_out(out, overwrite)  # after the inputs are checked: no empty folder left
    ckpt = checkpoint_into(out_dir, method, config)
    purified, report = unlearn(
        model, data, method, seed=seed, known_attack=record, device=device, **config
    )
    if out_dir is not None:
        save_model(
            purified,
            out_dir,
            class_names=manifest.class_names,
            dataset=manifest.dataset,
            seed=seed,
            extra={"unlearned_from": str(directory), "method": method},
        )
        copy_attack(directory, out_dir)
        save_report_images(report, out_dir)
        atomic_write_json(out_dir / "report.json", {**report.to_dict(), "source": str(directory)})
        if ckpt is not None:
            shutil.rmtree(ckpt, ignore_errors=True)
    return purified, report


def _checkpoints(method: str) -> bool:
    """Whether the defense ``method`` can checkpoint (has a ``checkpoint_dir`` option)."""
    from unbackdoor.defenses.registry import DEFENSES

    if method not in DEFENSES:
        return False  # create_defense names the unknown method
    return any(f.name == "checkpoint_dir" for f in dataclasses.fields(DEFENSES.get(method)))


def save_report_images(report: UnlearnReport, directory: Path) -> list[Path]:
    """The report's pictures (inverted triggers, alpha sweep, ...) as ``<name>.png`` files."""
    paths = [directory / f"{name}.png" for name in report.images]
    for path, img in zip(paths, report.images.values(), strict=True):
        _save_image(img, path)
    return paths


def _save_image(img: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from unbackdoor.utils.io import atomic_write

    arr = (img.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    pil = Image.fromarray(arr.numpy())
    scale = max(1, 128 // max(pil.size))
    pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)
    atomic_write(path, lambda p: pil.save(p, format="PNG"))
