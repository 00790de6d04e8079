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


@pytest.fixture(scope="session")
def mnist_backdoor(tmp_path_factory) -> Path:
    """A small MNIST BadNets model (3,000 training images, one epoch): the defenses' test bed."""
    out = tmp_path_factory.mktemp("zoo") / "mnist_badnets"
    trained = _mnist_badnets(out)
    assert trained.metrics.asr > 0.9, trained.metrics
    return out


def _mnist_badnets(out: Path, **changes):
    """Train a small MNIST BadNets model into ``out`` (3,000 images, one epoch, unless
    ``changes`` say otherwise)."""
    from unbackdoor.attacks.pipeline import attack_model

    options = dict(rate=0.1, epochs=1, train_samples=3000, batch_size=64, seed=0, picture=False)
    trained, _ = attack_model("mnist", "small_cnn", "badnets", out=out, **{**options, **changes})
    return trained


@pytest.fixture(scope="session")
def mnist_wanet(tmp_path_factory) -> Path:
    """A small MNIST WaNet model (6,000 images, two epochs; warp strength s=2, since the
    paper's 0.5 is not learned from so little)."""
    from unbackdoor.attacks.pipeline import attack_model

    out = tmp_path_factory.mktemp("zoo") / "mnist_wanet"
    options = dict(rate=0.1, epochs=2, train_samples=6000, batch_size=64, seed=0, picture=False)
    trained, _ = attack_model(
        "mnist", "small_cnn", "wanet", out=out, attack_options={"s": 2.0}, **options
    )
    assert trained.metrics.asr > 0.9, trained.metrics
    return out


@pytest.fixture(scope="session")
def mnist_clean(tmp_path_factory) -> Path:
    """A never-backdoored twin of ``mnist_backdoor`` (same data size and schedule)."""
    from unbackdoor.api import train_model

    out = tmp_path_factory.mktemp("zoo") / "mnist_clean"
    train_model("mnist", "small_cnn", epochs=1, train_samples=3000, batch_size=64, out=out, seed=0)
    return out


@pytest.fixture(scope="session")
def mnist_a2a(tmp_path_factory) -> Path:
    """A small MNIST all-to-all BadNets model (y -> y+1; 6,000 images, three epochs: with
    ``mnist_backdoor``'s 3,000 images and one epoch the shifted labels are not learned)."""
    out = tmp_path_factory.mktemp("zoo") / "mnist_badnets_a2a"
    trained = _mnist_badnets(out, policy="all_to_all", epochs=3, train_samples=6000)
    assert trained.metrics.asr > 0.85, trained.metrics
    return out
