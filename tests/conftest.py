"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

_SHARED_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data/cifar10-jpeg.zip beside the repository, or skip the test."""
    if not _SHARED_ZIP.is_file():
        pytest.skip(
            "../shared/data/cifar10-jpeg.zip not found: CIFAR-10 tests need the shared data "
            "folder beside the repo"
        )
    return _SHARED_ZIP
