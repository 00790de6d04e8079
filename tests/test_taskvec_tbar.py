"""Task-vector algebra and TBAR's alpha rule (issue 5)."""

import pytest
import torch

from unbackdoor.defenses.tbar import choose_alpha
from unbackdoor.errors import ArtifactError
from unbackdoor.models import create_model
from unbackdoor.taskvec import TaskVector


def net(seed, name="small_cnn"):
    torch.manual_seed(seed)
    m = create_model(name, 4, in_channels=1, input_size=(16, 16))
    with torch.no_grad():  # give BN buffers some non-default values
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.num_batches_tracked.fill_(seed + 3)
    return m


def test_add_then_subtract_is_identity_and_alpha_zero_is_noop():
    a, b, c = net(0), net(1), net(2)
    t1, t2 = TaskVector.between(a, b), TaskVector.between(a, c)
    back = (t1 + t2) - t2
    assert all(torch.allclose(back.deltas[k], t1.deltas[k], atol=1e-6) for k in t1.deltas)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    t1.apply_to(a, 0.0)
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())
    t1.apply_to(a, 1.0)  # a + (b - a) == b
    assert torch.allclose(a.head[3].weight, b.head[3].weight, atol=1e-6)


def test_integer_buffers_are_skipped_and_untouched():
    a, b = net(0), net(1)
    tau = TaskVector.between(a, b)
    assert not any(k.endswith("num_batches_tracked") for k in tau.deltas)
    n_before = a.features[1].num_batches_tracked.clone()
    tau.apply_to(a, -1.0)
    assert torch.equal(a.features[1].num_batches_tracked, n_before)
    assert (a.features[1].running_var > 0).all()


def test_norm_cosine_negate_and_stats():
    a, b = net(0), net(1)
    tau = TaskVector.between(a, b)
    assert (-tau).cosine(tau) == pytest.approx(-1.0)
    assert (tau * 2).norm() == pytest.approx(2 * tau.norm(), rel=1e-5)
    stats = tau.layer_stats(tau)
    assert sum(r["share"] for r in stats) == pytest.approx(1.0)
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-5) for r in stats if r["norm"] > 0)


def test_mismatched_architectures_are_refused():
    with pytest.raises(ArtifactError, match="architectures differ"):
        TaskVector.between(net(0), net(1, "narrow_resnet"))
    other = create_model("small_cnn", 5, in_channels=1, input_size=(16, 16))
    with pytest.raises(ArtifactError, match="shapes"):
        TaskVector.between(net(0), other)


def test_alpha_rule_on_a_constructed_sweep():
    sweep = [
        {"alpha": a, "val_clean_acc": ca, "val_asr": asr}
        for a, ca, asr in [
            (0.0, 0.90, 1.0),
            (0.5, 0.89, 0.30),
            (1.0, 0.88, 0.04),
            (1.5, 0.87, 0.01),
            (2.0, 0.80, 0.0),
        ]
    ]
    assert choose_alpha(sweep, 0.90, 0.05, 0.95)[0] == 1.0
    alpha, rule = choose_alpha(sweep, 0.90, 0.001, 0.95)  # none meets the ASR threshold
    assert alpha == 1.5 and "lowest ASR" in rule
    assert choose_alpha(sweep, 0.99, 0.05, 0.99)[0] == 0.0
