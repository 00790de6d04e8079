"""One grid cell, run anywhere: the models it needs, the defense, the metrics, the re-tuning attack.

Three roles, all keyed by (data set, model, attack, defense, budget, seed):

- ``ceiling``: the backdoored model as it is (defense ``none``): CA, ASR, RA and its RA-ASR;
- ``floor``: a never-backdoored model of the same architecture and recipe re-tuned with the same
  poisoned samples: the RA-ASR a completely forgotten backdoor should not beat;
- ``defense``: the backdoored model purified with the defender's budget of clean samples.

Models come from the zoo (:mod:`unbackdoor.attacks.zoo`), keyed by their training config, so
cells that share a model share one training run, across grids too. :func:`run_cell` never raises
on a failed cell: it returns a row with ``status: error``, the error and its traceback. It also
writes the row to ``row.json`` in the cell's folder, so a row survives a grid process that dies
while its cell was running elsewhere (on a cluster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unbackdoor.bench.config import NONE, AttackSpec, DefenseSpec, TrainSpec, stable_hash
from unbackdoor.bench.store import cpu_name, now_iso
from unbackdoor.data import ImageDataset
from unbackdoor.errors import ConfigError
from unbackdoor.utils.io import atomic_write_json, atomic_write_text, read_json

FAILED_MARKER = ".failed"  # in a zoo entry whose training failed in this grid run

CELLS_DIR = "cells"
ROW_JSON = "row.json"
TEST_SUBSET_SEED = 2024
CLEAN_LABEL_SHARE = 0.95  # a clean-label attack poisons at most 95% of the target class


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=8)
def _load(dataset: str, split: str) -> ImageDataset:
    from unbackdoor.data.registry import load_dataset

    return load_dataset(dataset, split)


def split_for(dataset: str, split: str, manifest: Any) -> ImageDataset:
    """A split of ``dataset`` as the model of ``manifest`` sees it (cached per process)."""
    from unbackdoor.data.registry import conform

    spec = manifest.spec
    return conform(
        _load(dataset, split),
        class_names=manifest.class_names,
        image_size=tuple(spec.input_size),
        channels=spec.in_channels,
    )


def test_split(dataset: str, manifest: Any, test_samples: int | None) -> ImageDataset:
    data = split_for(dataset, "test", manifest)
    if test_samples is not None and test_samples < len(data):
        data = data.sample(test_samples, TEST_SUBSET_SEED)
    return data


def budget_samples(budget: int | float, train_size: int) -> int:
    """Clean samples a budget stands for: a count, or a fraction of the training set."""
    if isinstance(budget, float):
        return max(10, round(budget * train_size))
    return int(budget)


# ----------------------------------------------------------------------------- zoo models
def resolve_rate(
    dataset: str, attack: str, rate: float | None, default: float, target: int, policy: str | None
) -> float:
    """The poisoning rate of an attack in the grid.

    An explicit ``rate`` wins; poison-label attacks get the grid's ``default``; clean-label ones
    their usual rate capped at 95% of the target class (MNIST's class 0 is 9.9% of the data).
    """
    from unbackdoor.attacks.registry import ATTACKS

    if rate is not None:
        return rate
    cls = ATTACKS.get(attack)
    if (policy or cls.policy) != "clean_label":
        return default
    share = float((_load(dataset, "train").labels == target).float().mean())
    return min(cls.default_rate, round(CLEAN_LABEL_SHARE * share, 3))


@dataclass
class ModelJob:
    """A zoo model: backdoored with ``attack`` (``None``: never backdoored)."""

    dataset: str
    model: str
    attack: str | None
    seed: int
    rate: float | None = None
    target: int = 0
    policy: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train: TrainSpec = field(default_factory=TrainSpec)
    zoo: str | None = None
    device: str = "auto"

    def zoo_config(self) -> dict[str, Any]:
        """The zoo key's config; optional entries appear only when set (stable old keys)."""
        cfg: dict[str, Any] = {
            "rate": self.rate if self.attack else None,
            "dataset": self.dataset,
            "model": self.model,
            "attack": self.attack or "clean",
            "seed": self.seed,
            "epochs": self.train.epochs,
            "target": self.target if self.attack else 0,
        }
        if self.attack and self.policy:
            cfg["policy"] = self.policy
        if self.attack and self.options:
            cfg["options"] = self.options
        if self.train.train_samples is not None:
            cfg["train_samples"] = self.train.train_samples
        if self.train.options:
            cfg["train_options"] = self.train.options
        return cfg

    def path(self) -> Path:
        from unbackdoor.attacks.zoo import zoo_key, zoo_root

        return (Path(self.zoo) if self.zoo else zoo_root()) / zoo_key(self.zoo_config())

    def twin(self) -> ModelJob | None:
        """The never-backdoored twin (same recipe, seed and data, plus the attack's
        ``clean_model_options()``, e.g. adversarial training for label-consistent) that an attack
        fitted to a clean model (label-consistent, TrojanNN) takes from the zoo; ``None`` for
        the others."""
        from unbackdoor.attacks import create_attack

        attack = None if self.attack is None else create_attack(self.attack, **self.options)
        if attack is None or not attack.needs_model:
            return None
        train = dataclasses.replace(
            self.train, options={**self.train.options, **attack.clean_model_options()}
        )
        return dataclasses.replace(
            self, attack=None, rate=None, policy=None, options={}, train=train
        )

    def get(self) -> Path:
        """The trained model's directory, trained (and cached) if the zoo lacks it.

        Raises at once if this grid run's own attempt to train it failed (a marker
        :func:`build_model` leaves, and removes when it tries again): the cells queued behind
        a model in the pipelined grid do not each train it again."""
        from unbackdoor.attacks.zoo import get_or_create

        root = Path(self.zoo) if self.zoo else None
        self.check_cached_attack()
        failed = self.path() / FAILED_MARKER
        if failed.is_file() and not (self.path() / "zoo.json").is_file():
            raise RuntimeError(
                f"model training failed: {failed.read_text().strip()} (the next run of the grid "
                f"tries again; or remove {failed})"
            )
        return get_or_create(self.zoo_config(), self._make, root)

    def attack_config(self) -> dict[str, Any] | None:
        """The attack's full config as the zoo would make it today (``None``: no attack)."""
        from unbackdoor.attacks import create_attack

        if self.attack is None:
            return None
        return create_attack(self.attack, seed=self.seed, **self.options).config()

    def check_cached_attack(self) -> None:
        """Refuse a finished zoo entry whose trigger was made with other attack settings.

        The zoo key holds the options a grid sets, not the attack's defaults, so that keys stay
        stable; an entry trained before a default changed would otherwise be reused silently.
        """
        from unbackdoor.attacks.zoo import ZOO_JSON

        path = self.path()
        if self.attack is None or not (path / ZOO_JSON).is_file():
            return
        stored = read_json(path / "attack.json").get("attack", {})
        changes = attack_config_changes(self.attack, stored, self.attack_config() or {})
        if changes:
            raise ConfigError(
                f"zoo entry {path} ({self.attack}) was trained with other attack settings "
                f"({', '.join(changes)}); delete that directory to retrain it"
            )

    def _make(self, path: Path) -> None:
        from unbackdoor.api import train_model
        from unbackdoor.attacks.pipeline import attack_model

        common: dict[str, Any] = {
            "seed": self.seed,
            "epochs": self.train.epochs,
            "train_samples": self.train.train_samples,
            "out": path,
            "overwrite": True,
            "device": self.device,
            **self.train.options,
        }
        if self.attack is None:
            train_model(self.dataset, self.model, **common)
            return
        twin = self.twin()
        attack_model(
            self.dataset,
            self.model,
            self.attack,
            rate=self.rate,
            target=self.target,
            policy=self.policy,
            attack_options=self.options or None,
            clean_model=None if twin is None else twin.get(),
            **common,
        )


def attack_config_changes(name: str, stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every setting of attack ``name`` that differs.

    A setting the attack decides when fitted (``fit_resolves``) matches its decision while it is
    at its default; one the stored config predates counts at the attack's ``added_later``
    value, the one that reproduces the older behaviour.
    """
    from unbackdoor.attacks import create_attack
    from unbackdoor.attacks.registry import ATTACKS

    cls = ATTACKS.get(name)
    wanted = dict(wanted)
    defaults = create_attack(name).config()
    for k in cls.fit_resolves:
        if wanted.get(k) == defaults.get(k):
            wanted[k] = stored.get(k)
    stored = {**cls.added_later, **stored}
    differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    return [f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in differ]


def _resolved_defense_config(spec: DefenseSpec | None) -> dict[str, Any] | None:
    if spec is None or spec.name == NONE:
        return None
    from unbackdoor.defenses import create_defense

    return comparable_defense_config(create_defense(spec.name, **spec.options).config())


def comparable_defense_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A stored defense config as rows compare it: without seed and device, and without the
    options the defense added later while they hold their old value."""
    from unbackdoor.defenses.registry import DEFENSES
    from unbackdoor.utils.config import without_added_later

    later = DEFENSES.get(cfg["name"]).added_later if cfg.get("name") in DEFENSES else {}
    return {k: v for k, v in without_added_later(cfg, later).items() if k not in ("seed", "device")}


def zoo_model(
    dataset: str,
    model: str,
    attack: str | None,
    seed: int = 0,
    *,
    epochs: int | None = None,
    rate: float | None = None,
    poison_rate: float = 0.1,
    target: int = 0,
    train_samples: int | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The zoo's model for an attack (``None``: clean) at the grid's rate; ``(path, config)``.

    ``options`` are attack settings other than the defaults (part of the zoo key)."""
    if attack is not None:
        rate = resolve_rate(dataset, attack, rate, poison_rate, target, None)
    job = ModelJob(
        dataset,
        model,
        attack,
        seed,
        rate,
        target,
        options=dict(options or {}),
        train=TrainSpec(epochs=epochs, train_samples=train_samples),
    )
    return job.get(), job.zoo_config()


def build_model(job: ModelJob) -> dict[str, Any]:
    """Run in a worker: make sure the zoo holds ``job``'s model; never raises. A failure
    leaves a marker in the entry (see :meth:`ModelJob.get`) until the next attempt."""
    t0 = time.perf_counter()
    marker = job.path() / FAILED_MARKER
    try:
        marker.unlink(missing_ok=True)
        cached = (job.path() / "zoo.json").is_file()
        path = job.get()
        return {"path": str(path), "cached": cached, "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001  (the grid records it on every cell that needs it)
        error = f"{type(e).__name__}: {e}"
        with contextlib.suppress(OSError):
            atomic_write_text(marker, error + "\n")
        return {"error": error, "traceback": traceback.format_exc()}


# ----------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """Everything a worker needs to run one cell (picklable, paths as strings)."""

    role: str  # ceiling, floor or defense
    dataset: str
    model: str
    attack: AttackSpec
    defense: DefenseSpec | None
    budget: int | float | None
    seed: int
    backdoored: ModelJob  # the model under test (clean when the attack is none)
    clean: ModelJob | None  # the never-backdoored twin (floor only)
    retune: dict[str, Any]
    out: str
    test_samples: int | None = None
    val_fraction: float = 0.2
    device: str = "auto"
    save_models: bool = False

    @property
    def defense_id(self) -> str:
        if self.role == "floor":
            return "floor"
        return NONE if self.defense is None else self.defense.id

    @property
    def budget_id(self) -> str:
        from unbackdoor.bench.config import budget_id

        return "-" if self.budget is None else budget_id(self.budget)

    @property
    def key(self) -> str:
        """Readable id plus a hash of everything that changes the cell's numbers."""
        semantic = {
            "role": self.role,
            "attack": dataclasses.asdict(self.attack),
            "defense": dataclasses.asdict(self.defense) if self.defense else None,
            "model_config": self.backdoored.zoo_config(),
            "retune": self.retune,
            "test_samples": self.test_samples,
            "val_fraction": self.val_fraction,
            "budget": self.budget,
        }
        parts = [self.dataset, self.model, self.attack.id, self.defense_id, self.budget_id]
        return "/".join([*parts, f"s{self.seed}"]) + "#" + stable_hash(semantic)

    def is_done(self, row: dict[str, Any] | None) -> bool:
        """Whether ``row`` (this cell's last stored row) finished with today's method config.

        The key hashes the grid's options only; a changed default of the method makes the
        stored row stale, so the cell runs again (and its new row supersedes the old).
        """
        if row is None or row.get("status") != "ok":
            return False
        made = row.get("attack_config")  # rows older than this record are taken as they are
        if made is not None and self.attack.name != NONE:
            wanted = self.backdoored.attack_config() or {}
            if attack_config_changes(self.attack.name, made, wanted):
                return False
        if self.role != "defense" or self.defense is None or self.defense.name == NONE:
            return True
        stored = comparable_defense_config(row.get("defense_config") or {})
        return stable_hash(stored) == stable_hash(_resolved_defense_config(self.defense))

    @property
    def directory(self) -> Path:
        name, _, digest = self.key.partition("#")
        return Path(self.out) / CELLS_DIR / (re.sub(r"[^A-Za-z0-9_.+-]+", "_", name) + "-" + digest)

    def header(self) -> dict[str, Any]:
        """The identifying part of the cell's row."""
        return {
            "key": self.key,
            "role": self.role,
            "dataset": self.dataset,
            "model": self.model,
            "attack": self.attack.id,
            "defense": self.defense_id,
            "method": None if self.defense is None else self.defense.name,
            "budget": self.budget,
            "seed": self.seed,
            "config": {
                "attack": dataclasses.asdict(self.attack),
                "defense": dataclasses.asdict(self.defense) if self.defense else None,
                "rate": self.backdoored.rate,
                "target": self.backdoored.target,
                "train": dataclasses.asdict(self.backdoored.train),
                "retune": self.retune,
                "test_samples": self.test_samples,
                "val_fraction": self.val_fraction,
                "device": self.device,
            },
        }


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell and return its row (``status`` ok or error); also writes ``row.json``."""
    from unbackdoor.utils.runinfo import run_info

    row = cell.header()
    row["started"] = now_iso()
    t0 = time.perf_counter()
    try:
        row.update(ROLES[cell.role](cell))
        row["attack_config"] = cell.backdoored.attack_config()
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001  (record the failure; the grid goes on)
        row.update(
            status="error",
            error=f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc(),
        )
    row["cell_time"] = time.perf_counter() - t0
    row["finished"] = now_iso()
    row.update(run_info(cell.seed))
    row["host"] = platform.node()
    row["cpu"] = cpu_name()
    with contextlib.suppress(OSError):  # the grid still gets the row from the return value
        atomic_write_json(cell.directory / ROW_JSON, row)
    return row


def _rel(path: Path, cell: Cell) -> str:
    """``path`` relative to the grid's folder (rows stay valid when the folder moves)."""
    try:
        return Path(path).resolve().relative_to(Path(cell.out).resolve()).as_posix()
    except ValueError:
        return str(path)


def _load_model(cell: Cell, job: ModelJob) -> tuple[nn.Module, Any, Path]:
    from unbackdoor.models import load_model
    from unbackdoor.utils.runinfo import resolve_device

    path = job.get()
    model, manifest = load_model(path, resolve_device(cell.device))
    return model, manifest, path


def _measure(model: nn.Module, test: ImageDataset, record: Any) -> Any:
    """The model's :class:`~unbackdoor.eval.metrics.Metrics` on ``test`` (with the attack's
    trigger when there is one)."""
    from unbackdoor.eval.metrics import evaluate

    if record is None:
        return evaluate(model, test)
    return evaluate(model, test, trigger=record.trigger, attack_labels=record.attack_labels)


def _numbers(m: Any) -> dict[str, Any]:
    return {"clean_acc": m.clean_acc, "asr": m.asr, "robust_acc": m.robust_acc}


def _retune(
    cell: Cell, model: nn.Module, manifest: Any, test: ImageDataset, record: Any, before: Any
):
    """The re-tuning attack's numbers (seeded by the cell's seed); ``before`` is ``model``'s
    :func:`_measure` (the attack's starting point, not measured twice)."""
    from unbackdoor.eval.retune import RetuneConfig, retune_attack

    if record is None:
        return {"retune_asr": None}
    cfg = RetuneConfig(**{**cell.retune, "seed": cell.seed, "device": cell.device})
    pool = split_for(cell.dataset, "train", manifest)
    t0 = time.perf_counter()
    r = retune_attack(model, pool, test, record, cfg, before=before)
    return {
        "retune_asr": r.after.asr,
        "retune_clean_acc": r.after.clean_acc,
        "retune_curve": r.curve,
        "retune_config": r.config,
        "retune_time": time.perf_counter() - t0,
    }


def _model_info(path: Path, cell: Cell, prefix: str = "model") -> dict[str, Any]:
    from unbackdoor.models.artifact import weights_digest

    info: dict[str, Any] = {
        f"{prefix}_path": str(path),
        f"{prefix}_zoo_key": path.name,
        f"{prefix}_weights_sha256": weights_digest(path),
    }
    train_json = path / "train.json"
    if train_json.is_file():
        t = read_json(train_json)
        info[f"{prefix}_train_time"] = t.get("wall_time")
        info[f"{prefix}_train_samples"] = t.get("train_samples")
    return info


def _attack_of(path: Path) -> Any:
    from unbackdoor.attacks.store import has_attack, load_attack

    return load_attack(path) if has_attack(path) else None


def save_true_trigger(record: Any, test: ImageDataset, path: Path, n: int = 16) -> Path:
    """The true trigger as one picture: mean |triggered - clean| over a few test images."""
    from unbackdoor.unlearn import _save_image

    x = test.sample(min(n, len(test)), 0).float_images()
    with torch.no_grad():
        diff = (record.trigger(x, torch.arange(x.shape[0])) - x).abs().mean(0)
    diff = diff / diff.max().clamp_min(1e-8)
    _save_image(diff, path)
    return path


def _trigger_pictures(cell: Cell, record: Any, test: ImageDataset, bd_path: Path) -> dict:
    if record is None:
        return {}
    out = {"true_trigger": _rel(save_true_trigger(record, test, cell.directory / "true.png"), cell)}
    if (bd_path / "trigger.png").is_file():
        out["true_trigger_picture"] = str(bd_path / "trigger.png")
    return out


def run_ceiling(cell: Cell) -> dict[str, Any]:
    """The backdoored model left as it is (or the clean one when the attack is none)."""
    model, manifest, path = _load_model(cell, cell.backdoored)
    record = _attack_of(path)
    test = test_split(cell.dataset, manifest, cell.test_samples)
    t0 = time.perf_counter()
    m = _measure(model, test, record)
    row = {**_numbers(m), "eval_time": time.perf_counter() - t0}
    row.update(_retune(cell, model, manifest, test, record, m))
    row.update(_model_info(path, cell))
    row.update(_trigger_pictures(cell, record, test, path))
    return row


def run_floor(cell: Cell) -> dict[str, Any]:
    """A never-backdoored model re-tuned with the attack's own poisoned samples."""
    assert cell.clean is not None
    _, _, bd_path = _load_model(cell, cell.backdoored)
    model, manifest, path = _load_model(cell, cell.clean)
    record = _attack_of(bd_path)
    test = test_split(cell.dataset, manifest, cell.test_samples)
    m = _measure(model, test, record)
    row = _numbers(m)
    row.update(_retune(cell, model, manifest, test, record, m))
    row.update(_model_info(path, cell))
    return row


def run_defense(cell: Cell) -> dict[str, Any]:
    """Purify the backdoored model with the defense, then measure everything."""
    from unbackdoor.eval.metrics import defense_effectiveness_rate

    assert cell.defense is not None and cell.budget is not None
    model, manifest, path = _load_model(cell, cell.backdoored)
    record = _attack_of(path)
    test = test_split(cell.dataset, manifest, cell.test_samples)
    before = _numbers(_measure(model, test, record))
    del model
    purified, report = purify(cell, path, manifest)
    t0 = time.perf_counter()
    measured = _measure(purified, test, record)
    after = _numbers(measured)
    row: dict[str, Any] = {**after, "eval_time": time.perf_counter() - t0, "before": before}
    if record is not None:
        row["der"] = defense_effectiveness_rate(
            before["asr"], after["asr"], before["clean_acc"], after["clean_acc"]
        )
    row.update(
        {
            "defense_time": report.wall_time,
            "peak_memory_mb": report.peak_memory_mb,
            "clean_samples_used": report.clean_samples_used,
            "val_samples": report.val_samples,
            "known_attack": report.known_attack,
            "backdoor_found": report.backdoor_found,
            "suspected_target": report.suspected_target,
            "anomaly_score": report.anomaly_score,
            "defense_config": report.config,
        }
    )
    diag = report.diagnostics or {}
    if "alpha_sweep" in diag:
        row["alpha_sweep"] = diag["alpha_sweep"]
        row["alpha"] = diag.get("alpha")
    row.update(_save_images(cell, report))
    row.update(_retune(cell, purified, manifest, test, record, measured))
    row.update(_model_info(path, cell))
    row.update(_trigger_pictures(cell, record, test, path))
    return row


def purify(cell: Cell, path: Path, manifest: Any) -> tuple[nn.Module, Any]:
    """Run the cell's defense on the model in ``path`` with its budget of clean samples."""
    from unbackdoor.unlearn import unlearn_artifact

    assert cell.defense is not None and cell.budget is not None
    pool = split_for(cell.dataset, "train", manifest)
    n = budget_samples(cell.budget, len(pool))
    purified, report = unlearn_artifact(
        path,
        cell.defense.name,
        out=cell.directory / "model" if cell.save_models else None,
        clean_data=pool,
        clean_samples=n,
        seed=cell.seed,
        val_fraction=cell.val_fraction,  # passed on to unlearn()
        known_attack=cell.defense.known_attack,
        overwrite=True,
        device=cell.device,
        **cell.defense.options,
    )
    return purified, report


def _save_images(cell: Cell, report: Any) -> dict[str, Any]:
    """The defense's trigger pictures in the cell folder; the one for its suspected target."""
    from unbackdoor.unlearn import _save_image

    paths = {}
    for name, img in report.images.items():
        p = cell.directory / f"{name}.png"
        _save_image(img, p)
        paths[name] = _rel(p, cell)
    atomic_write_json(cell.directory / "report.json", report.to_dict())
    out: dict[str, Any] = {"inverted_triggers": paths, "cell_dir": _rel(cell.directory, cell)}
    t = report.suspected_target
    for name in (f"inverted_trigger_class{t}", "inverted_trigger"):
        if name in paths:
            out["inverted_trigger"] = paths[name]
            break
    else:
        found = [n for n in paths if n.startswith("inverted")]
        out["inverted_trigger"] = paths[found[0]] if found else None
    return out


ROLES = {"ceiling": run_ceiling, "floor": run_floor, "defense": run_defense}
