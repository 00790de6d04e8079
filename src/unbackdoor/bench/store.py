"""The results store: an append-only JSONL file, one row per grid cell.

Each row is written with one ``write`` of one line, then flushed and fsynced, so a crash leaves at
most a truncated last line; readers ignore such a line with a warning, and the next writer cuts
it off before appending. A grid resumes by skipping every key that already has a row without an
error; when a key has several rows (a failed cell that was retried), the last one counts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from unbackdoor.utils.io import to_jsonable
from unbackdoor.utils.runinfo import run_info


class ResultStore:
    """Rows of a grid in ``path`` (``results.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """Every complete row in file order; truncated or corrupt lines are skipped (warning)."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        rows: list[dict[str, Any]] = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if i == len(lines):  # no newline after it: a write that never finished
                warnings.warn(
                    f"{self.path}: ignoring a truncated last line ({len(line)} bytes)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                warnings.warn(
                    f"{self.path}: ignoring corrupt line {i}", RuntimeWarning, stacklevel=2
                )
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last row of each key."""
        return {r["key"]: r for r in self.read() if "key" in r}

    def done_keys(self) -> set[str]:
        """Keys whose last row finished without an error: the cells a resumed grid skips."""
        return {k for k, r in self.latest().items() if r.get("status") == "ok"}

    def _repair(self) -> None:
        """Cut a truncated last line off before appending (it would glue onto the new row)."""
        if not self.path.is_file():
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if not size:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            keep = f.read().rfind(b"\n") + 1
            warnings.warn(
                f"{self.path}: dropping a truncated last line ({size - keep} bytes)",
                RuntimeWarning,
                stacklevel=3,
            )
            f.truncate(keep)
            os.fsync(f.fileno())

    def append(self, row: dict[str, Any]) -> None:
        """Append ``row`` as one line: a single write, flushed and fsynced."""
        line = (json.dumps(to_jsonable(row), default=str) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:  # one write for a regular file; the loop only guards a short write
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.append(row)


def _newest_per_cell(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last of ``rows`` for each cell name (the key without its config hash), in order."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row["key"].partition("#")[0]
        latest.pop(name, None)
        latest[name] = row
    return list(latest.values())


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The last row of each cell in a results file, in file order.

    A cell rerun with another config (other options, or a changed default of its method)
    has the same readable name; its newest row supersedes the older one.
    """
    return _newest_per_cell(ResultStore(path).latest().values())


#: the row fields that hold paths relative to their results file's folder (the cell's pictures)
PATH_FIELDS = ("true_trigger", "inverted_trigger", "cell_dir")


def _rebased(row: dict[str, Any], path: Path) -> dict[str, Any]:
    """``row`` of the results file ``path``, tagged with it, and its picture paths joined to
    that file's folder so that they stay valid away from it."""
    row = {**row, "results_file": str(path)}
    for name in PATH_FIELDS:
        if isinstance(row.get(name), str):
            row[name] = str(path.parent / row[name])
    if isinstance(row.get("inverted_triggers"), dict):
        row["inverted_triggers"] = {
            k: str(path.parent / v) for k, v in row["inverted_triggers"].items()
        }
    return row


def merge_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The last row of each cell over one or several results files: a grid run in pieces
    (other machines, other sessions, scratch folders) read as one.

    Files are read in the order given and a later file's row of a cell supersedes an earlier
    one, as a later row does within one file. Each row gains ``results_file`` (where it came
    from), and its picture paths (:data:`PATH_FIELDS`, ``inverted_triggers``) are joined to
    that file's folder.
    """
    if not paths:
        raise ValueError("merge_results needs at least one results file")
    return _newest_per_cell(
        _rebased(row, path) for path in map(Path, paths) for row in read_results(path)
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    """How this process was started: ``unbackdoor bench ...`` or ``python script.py ...``."""
    argv = list(sys.argv) or [""]
    if argv[0].endswith(".py"):
        argv = [Path(sys.executable).name, *argv]
    else:
        argv[0] = Path(argv[0]).name
    return " ".join(shlex.quote(a) for a in argv)


def provenance(seed: int | None = None) -> dict[str, Any]:
    """Command line, date, machine and library versions, stored beside every result."""
    return {
        "command": command_line(),
        "date": now_iso(),
        "host": platform.node(),
        "cpu": cpu_name(),
        "platform": platform.platform(),
        **run_info(seed),
    }
