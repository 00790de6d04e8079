"""Progress bars on standard error, so that standard output stays clean for ``--json``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    return os.environ.get("UNBACKDOOR_NO_PROGRESS", "") in ("", "0")


def progress(
    iterable: Iterable[T], desc: str = "", total: int | None = None, enabled: bool = True, **kw: Any
) -> Any:
    """A tqdm bar on stderr, silenced with ``UNBACKDOOR_NO_PROGRESS=1`` or ``enabled=False``."""
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=sys.stderr,
        disable=not (enabled and progress_enabled()),
        leave=False,
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,
        **kw,
    )
