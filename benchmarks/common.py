"""Helpers shared by the benchmark scripts (most live in :mod:`unbackdoor.bench` now)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unbackdoor.bench.store import provenance
from unbackdoor.bench.tables import md_table
from unbackdoor.utils.io import atomic_write_json, file_lock, read_json

__all__ = ["emit_row", "locked", "md_table", "provenance", "update_json"]


def emit_row(row: dict[str, Any], path: Path) -> None:
    """Print ``row`` as one JSON line and append it to the JSON-lines file ``path``."""
    line = json.dumps(row)
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock named after ``path`` (in the temp folder, not beside it).

    Benchmark runs of different attacks may go on in parallel and share one results file; each
    read-modify-write of it happens under this lock so that no run drops another's rows.
    """
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with file_lock(Path(tempfile.gettempdir()) / f"unbackdoor-bench-{digest}.lock"):
        yield


def update_json(path: Path, update: Callable[[Any], Any], default: Callable[[], Any]) -> Any:
    """Read ``path`` (or ``default()``), apply ``update`` in place, write it back atomically.

    The whole cycle holds :func:`locked`, so it sees what parallel runs wrote before it.
    Returns the updated object.
    """
    with locked(path):
        data = read_json(path) if path.is_file() else default()
        update(data)
        atomic_write_json(path, data)
    return data
