"""Helpers shared by the benchmark scripts (they live in :mod:`unbackdoor.bench` now)."""

from __future__ import annotations

from unbackdoor.bench.report import md_table
from unbackdoor.bench.store import provenance

__all__ = ["md_table", "provenance"]
