"""Adversarial baselines on the small MNIST BadNets model: I-BAU, ANP, SAU, and FT (issue 6).

The ASR tests are slow (marked): I-BAU needs its official defaults on 2,000 images to find the
backdoor (see ``SETUPS``), and SAU and fine-tuning do not remove this backdoor at all (the
measured reasons are on their xfail markers). ANP is checked for what it does (masks, a pruning
chosen on the held-out split only, a loadable model, the fast net's fixed-scale BatchNorms) but
not for a lower ASR: on this 2-conv net the backdoor lives in the hidden units of the linear
head, not in BatchNorm channels (zeroing even the 20 BatchNorm channels that react most to the
trigger leaves the ASR at 100%), and ANP's adversarial neuron perturbations send clean images
to classes 4 and 5, not to the target, so the paper's premise does not hold here. Masking the
linear head's hidden units as well (``layers="all"``, 300 iterations, measured 2026-12-07) takes
the ASR from 100% to 56% (600 images) or 72% (1,000 images, CA -5 points), and sweeping the
threshold to 0.9 on the val split does no better (65% / 85%): too weak and too noisy to assert.
The fast net trained on MNIST (3 epochs, lr 0.1) keeps BadNets through fine-tuning as well
(ASR 99.7% -> 98.9%). Commands and figures: ``benchmarks/baselines_mnist/README.md``.
"""

from __future__ import annotations

import copy

import pytest

import unbackdoor
from unbackdoor.attacks import load_attack
from unbackdoor.data.registry import DATASETS
from unbackdoor.defenses import create_defense, list_defenses
from unbackdoor.errors import ConfigError

# The defender's data for the ASR tests. I-BAU runs its official defaults on 2,000 images (1,600
# to train on: 16 batches of 100 a round); with 600 images (5 batches) its inner maximisation,
# one step per batch, never reaches the backdoor (see ``ibau.py``) and the ASR stays at 97%.
SETUPS: dict[str, tuple[int, dict]] = {
    "ibau": (2000, {}),
    "sau": (1000, dict(rounds=4, batch_size=64)),
    "ft": (1000, {}),
}


@pytest.fixture(scope="module")
def bench(mnist_backdoor):
    """The backdoored model, the defender's 600 clean images, a metric on 2,000 test images."""
    model, _ = unbackdoor.load_model(mnist_backdoor)
    data = unbackdoor.load_dataset("mnist", "train").sample(600, 2)
    test = unbackdoor.load_dataset("mnist", "test").sample(2000, 0)
    rec = load_attack(mnist_backdoor)

    def metrics(m):
        return unbackdoor.evaluate(m, test, trigger=rec.trigger, attack_labels=rec.attack_labels)

    return mnist_backdoor, model, data, metrics, metrics(model)


def check_purified(path, model, purified, report, data):
    assert type(purified) is type(model)
    fresh, _ = unbackdoor.load_model(path)  # the architecture loads the purified weights
    fresh.load_state_dict(purified.state_dict())
    assert 0 < report.diagnostics["val_clean_acc"] <= 1
    assert report.clean_samples_used == len(data)


SAU_OPEN = pytest.mark.xfail(
    reason="SAU leaves this model's backdoor alone: its shared adversarial examples live in an "
    "L_inf ball of 0.2 (BackdoorBench's), while the MNIST BadNets trigger is a 3x3 patch of value "
    "1 on black (L_inf 1), and on MNIST the ball's adversarial examples mostly go to other "
    "classes (18% of them to the target at the first step). Measured with the defaults on "
    "1,000 images, 20 rounds (260 steps of 64): ASR 100% -> 100%, CA 91.0% -> 94.1%, the model "
    "made robust inside the ball (shared adversarial examples 31% -> 3%); eps 0.3: ASR 100%",
    strict=False,
)


FT_OPEN = pytest.mark.xfail(
    reason="fine-tuning on clean data keeps this backdoor, as the literature's weakest baseline "
    "often does: measured 2026-12-06 with the defaults (10 epochs of 128, SGD lr 0.01, cosine), "
    "ASR 99.7% -> 99.1% (600 images) and 97.8% (1,000 images) at CA 92.5% -> 94.7%",
    strict=False,
)


@pytest.mark.slow  # I-BAU: 5 rounds over 1,600 images, 1-5 min on this project's 2-core CPU
@pytest.mark.parametrize(
    "method",
    ["ibau", pytest.param("sau", marks=SAU_OPEN), pytest.param("ft", marks=FT_OPEN)],
)
def test_lowers_asr_and_keeps_clean_accuracy(bench, method):
    path, model, _, metrics, before = bench
    n, options = SETUPS[method]
    data = unbackdoor.load_dataset("mnist", "train").sample(n, 2)
    purified, report = unbackdoor.unlearn(model, data, method, **options)
    after = metrics(purified)
    assert before.asr > 0.9
    assert after.asr < 0.6 * before.asr, (method, after)
    assert after.clean_acc > before.clean_acc - 0.05, (method, after)
    check_purified(path, model, purified, report, data)


def test_ibau_reports_rounds_and_perturbation(bench):
    _, model, data, _, _ = bench
    _, report = unbackdoor.unlearn(model, data, "ibau", rounds=1, batch_size=200)
    (r,) = report.diagnostics["rounds"]
    assert r["delta_l2"] > 0 and 0 <= r["fooling_rate"] <= 1
    assert report.images["perturbation"].shape == (1, 28, 28)


def test_anp_prunes_on_val_only_and_never_reads_test_data(bench, monkeypatch):
    """Loading test data raises during ANP, and every evaluation it runs is on its val split."""
    path, model, data, metrics, before = bench
    real = DATASETS.get("mnist")

    def no_test(split="train", **kw):
        if split == "test":
            raise AssertionError("a defense loaded test data")
        return real(split, **kw)

    monkeypatch.setitem(DATASETS._entries, "mnist", no_test)
    import unbackdoor.defenses.anp as anp_mod

    seen = []
    real_evaluate = anp_mod.evaluate

    def spy(m, ds, **kw):
        seen.append(ds)
        return real_evaluate(m, ds, **kw)

    monkeypatch.setattr(anp_mod, "evaluate", spy)
    clean, val = data.split(0.8, 0)
    out = create_defense("anp", iterations=60, batch_size=64).run(copy.deepcopy(model), clean, val)
    with pytest.raises(AssertionError, match="test data"):
        unbackdoor.load_dataset("mnist", "test")
    monkeypatch.undo()

    assert seen and all(ds is val for ds in seen)
    d = out.diagnostics
    sweep = d["val_sweep"]
    assert [s["point"] for s in sweep] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])
    ok = [s for s in sweep if s["val_clean_acc"] >= d["val_clean_acc_before"] * 0.95]
    assert d["chosen"] == (ok[-1]["point"] if ok else None)
    assert len(d["pruned"]) == (ok[-1]["pruned"] if ok else 0)
    assert d["layers"] == ["features.1", "features.5"]  # BatchNorm channels: 96 neurons
    bn = dict(out.model.named_modules())
    for name, i, mask in d["pruned"]:
        assert mask <= d["chosen"] + 1e-9 and float(bn[name].weight[i].detach()) == 0.0
    assert metrics(out.model).clean_acc > before.clean_acc - 0.05
    fresh, _ = unbackdoor.load_model(path)  # a plain model of the same architecture
    fresh.load_state_dict(out.model.state_dict())


def test_anp_masks_linear_units_on_request(bench):
    _, model, data, _, _ = bench
    clean, val = data.split(0.8, 0)
    out = create_defense("anp", iterations=5, layers="all", pruning_by="number").run(
        copy.deepcopy(model), clean, val
    )
    assert out.diagnostics["layers"] == ["features.1", "features.5", "head.1"]
    assert out.diagnostics["num_neurons"] == 32 + 64 + 128
    assert len(out.diagnostics["pruned"]) <= round(0.1 * 224)


@pytest.mark.parametrize(
    ("method", "key", "value"),
    [
        ("ibau", "rounds", 0),
        ("ibau", "norm_bound", -1.0),
        ("ibau", "outer_portion", 1.5),
        ("ibau", "optimizer", "rmsprop"),
        ("anp", "eps", -0.1),
        ("anp", "pruning_by", "random"),
        ("anp", "pruning_max", 2.0),
        ("anp", "acc_tolerance", 1.0),
        ("anp", "layers", "linear"),
        ("sau", "eps", 0.0),
        ("sau", "pgd_init", "middle"),
        ("sau", "lmd_3", -1.0),
    ],
)
def test_config_errors_name_the_field(method, key, value):
    with pytest.raises(ConfigError, match=key):
        create_defense(method, **{key: value})


def test_unknown_option_is_an_error():
    with pytest.raises(ConfigError, match="rounds_"):
        create_defense("sau", rounds_=3)


def test_listed_with_one_line_descriptions():
    names = list_defenses()
    for method in ("ibau", "anp", "sau"):
        assert names[method] and "\n" not in names[method]


def test_anp_runs_on_a_tiny_fastnet_and_prunes_its_fixed_scale_batchnorms():
    """The fast net's BatchNorms have a fixed scale (no ``weight``) and its whitening conv is a
    functional call with a frozen filter: ANP masks the BatchNorm channels, and a pruned channel
    outputs its shift alone, in eval and in train mode; the state dict loads into a fresh net."""
    import torch

    from unbackdoor.data.dataset import ImageDataset

    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(100, 3, 32, 32, generator=gen) * 255).to(torch.uint8)
    data = ImageDataset(images, torch.arange(100) % 10, [str(i) for i in range(10)], "synthetic")
    model = unbackdoor.create_model("fastnet", 10, widths=(8, 16, 16))
    model.init_from_data(images[:50].float() / 255)
    clean, val = data.split(0.8, 0)
    anp = create_defense(
        "anp", iterations=4, batch_size=32, pruning_by="number", pruning_max=6, select_on_val=False
    )
    out = anp.run(copy.deepcopy(model), clean, val)
    d = out.diagnostics
    assert d["layers"] == [f"group{g}.norm{k}" for g in (1, 2, 3) for k in (1, 2)]
    assert d["num_neurons"] == 8 * 2 + 16 * 4 and len(d["pruned"]) == 6
    assert d["mask_curve"][-1]["mean_mask"] < 1  # the masks moved: they reach the loss
    modules = dict(out.model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    for name in {p[0] for p in d["pruned"]}:
        modules[name].register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    x = images[:16].float() / 255
    for train_mode in (False, True):
        out.model.train(train_mode)
        with torch.no_grad():
            out.model(x)
        for name, i, _ in d["pruned"]:
            shift = modules[name].bias[i] * modules[name].bias_scale
            assert torch.allclose(seen[name][:, i], shift.expand_as(seen[name][:, i]), atol=1e-5)
    fresh = unbackdoor.create_model("fastnet", 10, widths=(8, 16, 16))
    fresh.load_state_dict(out.model.state_dict())


def test_sau_loss_stays_finite_under_bf16_for_confident_predictions():
    """Under bf16 autocast ``1 + 1e-6`` rounds to 1, so a probability of 1 for the backdoored
    model's adversarial class gave ``log(0)`` (the CIFAR grid's SAU cell stopped on an inf loss)."""
    import torch

    from unbackdoor.data.loader import Batch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with torch.no_grad():  # class 1 below a mean pixel of 0.5, class 0 above, both very sure
        net[1].weight.copy_(torch.tensor([[1000 / 12] * 12, [-1000 / 12] * 12, [0.0] * 12]))
        net[1].bias.copy_(torch.tensor([-500.0, 500.0, 0.0]))
    x = torch.full((4, 3, 2, 2), 0.4)
    batch = Batch(x, torch.full((4,), 2), torch.arange(4))
    sau = create_defense("sau")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = sau.unlearn_loss(net, copy.deepcopy(net), batch, torch.full_like(x, 0.2), 3)
    assert stats["potential_poison"] == 1.0 and torch.isfinite(loss)
