"""Per-image smooth perturbations that move a model's inner features most (feature_pgd)."""

import pytest
import torch

from unbackdoor.inversion.feature_pgd import smooth_feature_pgd
from unbackdoor.models import create_model
from unbackdoor.models.taps import LayerTaps, relative_gap


def _net():
    torch.manual_seed(0)
    return create_model("fastnet", 10, widths=(8, 16, 16)).eval()


def _gap(model, x, adv) -> float:
    with LayerTaps(model) as taps, torch.no_grad():
        model(x)
        clean = [v.clone() for v in taps.values]
        model(adv)
        return sum(relative_gap(a, b).item() for a, b in zip(taps.values, clean, strict=True))


def test_the_steps_move_the_features_further_than_the_start_within_the_ball():
    model = _net()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1

    def pgd(steps: int) -> torch.Tensor:
        return smooth_feature_pgd(
            model, x, eps=0.1, steps=steps, generator=torch.Generator().manual_seed(2)
        )

    start, adv = pgd(0), pgd(3)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert _gap(model, x, adv) > 1.2 * _gap(model, x, start)
    # smooth: neighbouring pixels differ far less than the perturbation's range
    d = adv - x
    assert (d[..., 1:] - d[..., :-1]).abs().max() < 0.5 * (d.max() - d.min())
    assert torch.equal(adv, pgd(3))


def test_bad_arguments_are_named():
    model = _net()
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="eps > 0"):
        smooth_feature_pgd(model, x, eps=0.0)
    with pytest.raises(ValueError, match="grid >= 2"):
        smooth_feature_pgd(model, x, eps=0.1, grid=1)


def test_the_targeted_search_raises_the_targets_probability_within_the_ball():
    from unbackdoor.inversion.feature_pgd import smooth_targeted_pgd

    model = _net()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1

    def log_p(xp: torch.Tensor) -> float:
        with torch.no_grad():
            return model(xp).log_softmax(1)[:, 4].mean().item()

    def pgd(steps: int) -> torch.Tensor:
        return smooth_targeted_pgd(
            model, x, 4, eps=0.1, steps=steps, generator=torch.Generator().manual_seed(2)
        )

    start, adv = pgd(0), pgd(4)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert log_p(adv) > log_p(start) and log_p(adv) > log_p(x)
    with pytest.raises(ValueError, match="target 10 is not a class of a 10-class model"):
        smooth_targeted_pgd(model, x, 10, eps=0.1)
