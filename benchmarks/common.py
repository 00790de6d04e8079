"""Helpers shared by the benchmark scripts: the record of how a result was produced."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from unbackdoor.utils.runinfo import run_info


def provenance(seed: int | None = None) -> dict[str, Any]:
    """Command line, date, machine and library versions, stored beside every result."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "platform": platform.platform(),
        **run_info(seed),
    }


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
