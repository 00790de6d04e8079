"""The zoo: a cache of backdoored (and clean) models keyed by the hash of their full config.

A benchmark grid asks for "BadNets on CIFAR-10 with fastnet, rate 0.1, target 0, seed 1": if a
model with exactly that config exists it is reused, never retrained. Entries live in
``$UNBACKDOOR_ZOO`` (default ``~/.cache/unbackdoor/zoo``), one artifact directory per hash with
a ``zoo.json`` beside the model. Unfinished entries (interrupted training) resume.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unbackdoor.models.artifact import is_artifact
from unbackdoor.utils.io import atomic_write_json, file_lock, read_json

ZOO_JSON = "zoo.json"
LOCKS = ".locks"
ZOO_FORMAT = 1


def zoo_root() -> Path:
    env = os.environ.get("UNBACKDOOR_ZOO")
    if env:
        return Path(env)
    cache = os.environ.get("UNBACKDOOR_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "unbackdoor") / "zoo"


def zoo_key(config: dict[str, Any]) -> str:
    """The hash of a full config (canonical JSON), the entry's name in the zoo."""
    canonical = json.dumps({"zoo_format": ZOO_FORMAT, **config}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class ZooEntry:
    key: str
    path: Path
    config: dict[str, Any]
    created: str
    size_bytes: int
    metrics: dict[str, Any]


def get_or_create(
    config: dict[str, Any], make: Callable[[Path], None], root: Path | None = None
) -> Path:
    """The artifact for ``config``: cached if present, else ``make(path)`` builds it there.

    Building holds a lock on the entry (``<root>/.locks/<key>.lock``): a second process of the
    machine asking for the same model waits for it instead of training it again.
    """
    root = root or zoo_root()
    path = root / zoo_key(config)
    if _finished(path):
        return path
    with file_lock(root / LOCKS / f"{path.name}.lock"):
        if _finished(path):  # built by the process that held the lock
            return path
        path.mkdir(parents=True, exist_ok=True)
        make(path)
        _write_zoo_json(path, config)
    return path


def _finished(path: Path) -> bool:
    return is_artifact(path) and (path / ZOO_JSON).is_file()


def _write_zoo_json(path: Path, config: dict[str, Any]) -> None:
    atomic_write_json(
        path / ZOO_JSON,
        {
            "key": path.name,
            "config": config,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def list_zoo(root: Path | None = None) -> list[ZooEntry]:
    root = root or zoo_root()
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not (d / ZOO_JSON).is_file():
            continue
        info = read_json(d / ZOO_JSON)
        metrics = read_json(d / "metrics.json") if (d / "metrics.json").is_file() else {}
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        out.append(
            ZooEntry(d.name, d, info.get("config", {}), info.get("created", ""), size, metrics)
        )
    return out


def prune_zoo(
    *,
    keys: list[str] | None = None,
    older_than_days: float | None = None,
    unfinished: bool = False,
    everything: bool = False,
    root: Path | None = None,
) -> list[str]:
    """Delete zoo entries (by key, by age, unfinished ones, or all); returns the removed keys."""
    root = root or zoo_root()
    if not root.is_dir():
        return []
    now = _dt.datetime.now(_dt.timezone.utc)
    removed = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != LOCKS):
        finished = (d / ZOO_JSON).is_file()
        drop = everything or (keys is not None and d.name in keys)
        drop = drop or (unfinished and not finished)
        if older_than_days is not None and finished:
            created = read_json(d / ZOO_JSON).get("created", "")
            try:
                age = now - _dt.datetime.fromisoformat(created)
                drop = drop or age.total_seconds() > older_than_days * 86400
            except ValueError:
                pass
        if drop:
            shutil.rmtree(d)
            removed.append(d.name)
    return removed
