"""Task-vector algebra and TBAR's alpha rule (issue 5)."""

import pytest
import torch
import torch.nn.functional as F

from unbackdoor.defenses.tbar import choose_alpha
from unbackdoor.errors import ArtifactError, ConfigError
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


def test_task_vectors_between_saved_artifacts(tmp_path):
    """Paths to artifacts work wherever modules do; a corrupt artifact is refused by name."""
    from unbackdoor.models import save_model

    a, b = net(0), net(1)
    for name, m in (("a", a), ("b", b)):
        save_model(m, tmp_path / name, class_names=list("wxyz"))
    from_disk = TaskVector.between(tmp_path / "a", str(tmp_path / "b"))
    in_memory = TaskVector.between(a, b)
    assert from_disk.deltas.keys() == in_memory.deltas.keys()
    assert all(torch.equal(from_disk.deltas[k], in_memory.deltas[k]) for k in in_memory.deltas)
    (tmp_path / "b" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="model.safetensors"):
        TaskVector.between(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        ("all", lambda k: True),
        ("no_head", lambda k: not k.startswith("head.3.")),
        (["features.0."], lambda k: k.startswith("features.0.")),
    ],
)
def test_tbar_params_choose_the_entries_of_the_vector(params, kept):
    """``params``: all parameters, all but the last linear layer, or name prefixes; BatchNorm
    running statistics only with ``buffers``."""
    from unbackdoor.defenses import create_defense

    model = net(0)
    names = [n for n, _ in model.named_parameters()]
    keys = create_defense("tbar", params=params).key_filter(model)
    chosen = [k for k in model.state_dict() if keys(k)]
    assert chosen == [n for n in names if kept(n)] and chosen
    assert not any("running_" in k for k in chosen)
    with_buffers = create_defense("tbar", params="all", buffers=True).key_filter(model)
    assert with_buffers is None  # every float entry, buffers included
    with pytest.raises(ConfigError, match="params"):
        create_defense("tbar", params="head_only")


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
    # inverted trigger: the largest alpha keeping the accuracy, whatever the estimate says
    alpha, rule = choose_alpha(sweep, 0.90, 0.05, 0.95, "largest")
    assert alpha == 1.5 and rule.startswith("largest") and "above" not in rule
    assert "above the threshold" in choose_alpha(sweep, 0.90, 0.001, 0.95, "largest")[1]
    assert choose_alpha(sweep, 0.99, 0.05, 0.99, "largest")[0] == 0.0
    with pytest.raises(ConfigError, match="rule"):
        choose_alpha(sweep, 0.90, 0.05, 0.95, "auto")


# --- TBAR: unknown-attack detection, linearized fine-tuning, the alpha sweep -------------------


def _fake_inversion(sizes):
    """An inversion result with the given per-class trigger sizes (no optimisation run)."""
    from unbackdoor.inversion import InversionResult, MaskPattern

    k = len(sizes)
    fam = MaskPattern(k, (1, 16, 16), generator=torch.Generator().manual_seed(0))
    return InversionResult(fam, list(range(k)), torch.tensor(sizes), torch.ones(k), torch.ones(k))


@pytest.mark.parametrize(
    "sizes, found",
    [
        ([10.0, 11.0, 9.5, 10.5], False),
        ([6.0, 11.0, 10.0, 10.5], False),  # index ~7 but only 1.7x cheaper: no backdoor
        ([1.0, 11.0, 9.5, 10.5], True),
    ],
)
def test_unknown_attack_honours_the_anomaly_threshold(monkeypatch, sizes, found):
    import synth
    import unbackdoor.defenses.tbar as tbar_mod
    from unbackdoor.inversion import mad_anomaly

    monkeypatch.setattr(tbar_mod, "invert", lambda *a, **k: _fake_inversion(sizes))
    data = synth.blobs(200, classes=4)
    model = net(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    defense = tbar_mod.TBAR(epochs=1, alphas=(0.0, 0.5), alpha_max=None, plot=False)
    train_part, val_part = data.split(0.8, 0)
    out = defense.run(model, train_part, val_part)
    top = float(mad_anomaly(torch.tensor(sizes)).max())
    assert out.backdoor_found is found and out.anomaly_score == pytest.approx(top)
    if not found:  # the model comes back untouched and no target is named
        assert out.suspected_target is None and "no backdoor" in out.diagnostics["result"]
        failed = "anomaly index and effect" if top < 2 else "effect"  # 1.7x cheaper
        assert f"its {failed} fall short" in out.diagnostics["result"]
        assert out.diagnostics["inversion"]["families_tried"] == [
            "mask_pattern",
            "additive",
            "warp",
        ]
        assert all(torch.equal(before[k], v) for k, v in out.model.state_dict().items())
    else:
        assert out.suspected_target == 0 and "alpha_sweep" in out.diagnostics


def test_tbar_does_not_flag_a_clean_model(mnist_clean):
    import unbackdoor

    model, _ = unbackdoor.load_model(mnist_clean)
    data = unbackdoor.load_dataset("mnist", "train").sample(600, 2)
    purified, report = unbackdoor.unlearn(model, data, "tbar", inversion_steps=100)
    assert report.backdoor_found is False and report.suspected_target is None
    # every family tried; an index over 2 may occur (10 classes), the effect guard holds it
    inv = report.diagnostics["inversion"]
    assert inv["families_tried"] == ["mask_pattern", "additive", "warp"]
    assert not any(v["found"] for v in inv["family_verdicts"].values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in purified.state_dict().items())


def test_linearized_model_is_the_first_order_expansion():
    from unbackdoor.taskvec import LinearizedModel

    base = net(0).eval()
    lin = LinearizedModel(base, keys=lambda k: not k.startswith("head.3"))
    x = torch.rand(8, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(lin(x), base(x), atol=1e-6)  # d = 0
        for d in lin.deltas:
            d.normal_(0, 1e-4)
    tau = lin.task_vector()
    assert set(tau.deltas) == {n for n, _ in base.named_parameters() if not n.startswith("head.3")}
    with torch.no_grad():  # the same first-order change as the weights moved by d
        moved = tau.apply_to(net(0), 1.0).eval()
        lin_out, moved_out, base_out = lin(x), moved(x), base(x)
    assert (lin_out - moved_out).abs().max() < 0.1 * (moved_out - base_out).abs().max()
    lin.train()  # training mode must not reach the frozen base's batch norm
    assert not lin._base.training
    loss = torch.nn.functional.cross_entropy(lin(x), torch.zeros(8, dtype=torch.long))
    loss.backward()
    assert all(d.grad is not None for d in lin.deltas)
    assert all(p.grad is None for p in lin._base.parameters())


def test_linearized_fine_tune_runs_in_fp32_under_bf16(monkeypatch):
    """torch.func.jvp cannot run under autocast: with ``bf16`` the tangent-space fine-tune
    stays in fp32 (it failed with a dtype error before) and still moves the weights. bf16 is
    forced on, so that a CPU without fast bf16 still runs the autocast path."""
    monkeypatch.setenv("UNBACKDOOR_BF16", "on")
    import synth
    from unbackdoor.defenses import create_defense

    data = synth.blobs(64, classes=4, size=16)
    d = create_defense("tbar", linearized=True, bf16=True, epochs=1, batch_size=32)
    tau = d.task_vector(net(0).eval(), data, d.key_filter(net(0)))
    assert 0 < tau.norm() < float("inf")


def test_sweep_extends_the_grid_until_the_rule_is_met(monkeypatch):
    import synth
    import unbackdoor.defenses.tbar as tbar_mod
    from unbackdoor.eval.metrics import Metrics

    data = synth.blobs(40, classes=4)

    def fake_eval(model, val, trigger=None, attack_labels=None, bf16=False):  # ASR falls with alpha
        a = float(model.head[3].bias[0].detach())  # the bias is alpha, see tau below
        return Metrics(clean_acc=0.9, asr=max(0.0, 1.0 - a / 2.7))

    monkeypatch.setattr(tbar_mod, "evaluate", fake_eval)
    model = net(0)
    with torch.no_grad():
        model.head[3].bias.zero_()
    tau = TaskVector({"head.3.bias": -torch.ones(4)})  # theta_b - alpha tau: bias = alpha
    spec = tbar_mod.TriggerSpec(lambda x, i: x, lambda y: y, "test", 0)
    grid = dict(alphas=(0.0, 1.0, 2.0), alpha_max=3.0, alpha_step=0.25, refine_smallest=False)
    sweep, base_ca = tbar_mod.TBAR(**grid, alpha_growth=1.0).sweep(model, tau, data, spec)
    assert [s["alpha"] for s in sweep] == [0.0, 1.0, 2.0, 2.25, 2.5, 2.75]
    assert choose_alpha(sweep, base_ca, 0.05, 0.95)[0] == 2.75
    sweep, _ = tbar_mod.TBAR(**grid, alpha_growth=1.25).sweep(model, tau, data, spec)
    assert [s["alpha"] for s in sweep] == [0.0, 1.0, 2.0, 2.5]  # 3.125 is past alpha_max
    # a long vector: ASR 100% -> 0% and CA under the floor between two grid points: bisect
    monkeypatch.setattr(
        tbar_mod,
        "evaluate",
        lambda model, val, trigger=None, attack_labels=None, bf16=False: Metrics(
            clean_acc=0.9 if float(model.head[3].bias[0].detach()) < 0.2 else 0.5,
            asr=max(0.0, 1.0 - float(model.head[3].bias[0].detach()) / 0.15),
        ),
    )
    coarse = dict(alphas=(0.0, 0.25), alpha_max=None, refine_smallest=False)
    sweep, base_ca = tbar_mod.TBAR(**coarse).sweep(model, tau, data, spec)
    assert [s["alpha"] for s in sweep] == [0.0, 0.25, 0.125, 0.1875]
    assert choose_alpha(sweep, base_ca, 0.01, 0.95)[0] == 0.1875
    sweep, _ = tbar_mod.TBAR(**coarse, alpha_refine=1).sweep(model, tau, data, spec)
    assert choose_alpha(sweep, base_ca, 0.01, 0.95)[1].startswith("no alpha met")
    img = tbar_mod.sweep_image(sweep, 2.75, 0.855, 0.05, "test")
    assert img.shape[0] == 3 and img.min() >= 0 and img.max() <= 1


def test_refine_smallest_bisects_below_the_first_alpha_meeting_both(monkeypatch):
    import synth
    import unbackdoor.defenses.tbar as tbar_mod
    from unbackdoor.eval.metrics import Metrics

    data = synth.blobs(40, classes=4)

    def fake_eval(model, val, trigger=None, attack_labels=None, bf16=False):
        # ASR 0 from alpha 1.2 on
        a = float(model.head[3].bias[0].detach())
        return Metrics(clean_acc=0.9 - 0.01 * a, asr=0.0 if a >= 1.2 else 0.8)

    monkeypatch.setattr(tbar_mod, "evaluate", fake_eval)
    model = net(0)
    with torch.no_grad():
        model.head[3].bias.zero_()
    tau = TaskVector({"head.3.bias": -torch.ones(4)})
    spec = tbar_mod.TriggerSpec(lambda x, i: x, lambda y: y, "given", 0)
    grid = dict(alphas=(0.0, 1.0, 1.5, 2.0), alpha_refine=3)
    off = tbar_mod.TBAR(**grid, refine_smallest=False)
    sweep, base_ca = off.sweep(model, tau, data, spec)
    assert [s["alpha"] for s in sweep] == [0.0, 1.0, 1.5, 2.0]  # off: the grid's 1.5
    assert tbar_mod.TBAR().refine_smallest  # the default since 2026-12-02
    sweep, base_ca = tbar_mod.TBAR(**grid).sweep(model, tau, data, spec)
    assert [s["alpha"] for s in sweep] == [0.0, 1.0, 1.5, 2.0, 1.25, 1.125, 1.1875]
    assert choose_alpha(sweep, base_ca, 0.01, 0.95)[0] == 1.25
    inverted = tbar_mod.TriggerSpec(lambda x, i: x, lambda y: y, "inverted", 0, anomaly=5.0)
    sweep, _ = tbar_mod.TBAR(**grid, refine_smallest=True).sweep(model, tau, data, inverted)
    assert all(s["alpha"] > 2 for s in sweep if s.get("refined"))  # the largest rule: as was


def test_largest_rule_sweeps_on_while_accuracy_lasts(monkeypatch):
    """With an inverted trigger (``auto`` -> ``largest``) the sweep does not stop at the first
    alpha meeting the ASR threshold: it extends until accuracy falls, then bisects that edge."""
    import synth
    import unbackdoor.defenses.tbar as tbar_mod
    from unbackdoor.eval.metrics import Metrics

    data = synth.blobs(40, classes=4)
    monkeypatch.setattr(  # ASR 0 from alpha 0.5 on; CA 0.9 up to alpha 3.2, then 0.5
        tbar_mod,
        "evaluate",
        lambda model, val, trigger=None, attack_labels=None, bf16=False: Metrics(
            clean_acc=0.9 if float(model.head[3].bias[0].detach()) <= 3.2 else 0.5,
            asr=0.0 if float(model.head[3].bias[0].detach()) >= 0.5 else 1.0,
        ),
    )
    model = net(0)
    with torch.no_grad():
        model.head[3].bias.zero_()
    tau = TaskVector({"head.3.bias": -torch.ones(4)})
    given = tbar_mod.TriggerSpec(lambda x, i: x, lambda y: y, "given", 0)
    inverted = tbar_mod.TriggerSpec(lambda x, i: x, lambda y: y, "inverted", 0, anomaly=5.0)
    defense = tbar_mod.TBAR(
        alphas=(0.0, 0.5, 1.0), alpha_growth=1.0, alpha_step=1.0, refine_smallest=False
    )
    assert defense.rule_for(given) == "smallest" and defense.rule_for(inverted) == "largest"
    sweep, _ = defense.sweep(model, tau, data, given)
    assert [s["alpha"] for s in sweep] == [0.0, 0.5, 1.0]
    sweep, base_ca = defense.sweep(model, tau, data, inverted)
    assert [s["alpha"] for s in sweep] == [0, 0.5, 1, 2, 3, 4, 5, 3.5, 3.25, 3.125, 3.1875]
    assert choose_alpha(sweep, base_ca, 0.01, 0.95, "largest")[0] == 3.1875
    assert tbar_mod.TBAR(alpha_rule="smallest").rule_for(inverted) == "smallest"
    with pytest.raises(ConfigError, match="alpha_rule"):
        tbar_mod.TBAR(alpha_rule="biggest")


# --- improvements: relative-norm layer ranking, target projection, recalibration -------------


def _params_tau(base, changes):
    """A vector over ``base``'s parameters: ``factor * weight`` for the layers in ``changes``."""
    params = dict(base.named_parameters())
    deltas = {k: torch.zeros_like(v.detach()) for k, v in params.items()}
    for layer, factor in changes.items():
        for k in (f"{layer}.weight", f"{layer}.bias"):
            deltas[k] = factor * params[k].detach()
    return TaskVector(deltas)


def test_top_layers_ranks_layers_by_relative_norm():
    from unbackdoor.defenses.tbar import _top_layers

    base = net(0)
    small = _params_tau(base, {"features.0": 0.5}).norm()
    factor = 1.5 * small / _params_tau(base, {"head.1": 1.0}).norm()
    assert factor < 0.5  # the wide layer moves less relative to its weights ...
    tau = _params_tau(base, {"features.0": 0.5, "head.1": factor})
    rows = tau.layer_norms(base)
    assert [r["layer"] for r in rows[:2]] == ["features.0", "head.1"]
    assert rows[0]["keys"] == "features.0.weight,features.0.bias"  # a layer is weight + bias
    assert rows[0]["relative"] == pytest.approx(0.5, rel=1e-5)
    assert rows[1]["share"] == pytest.approx(2.25 / 3.25, rel=1e-4)  # ... but holds 69% of it
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    kept = _top_layers(tau, 0.25, base)  # ranked by share, head.1 alone would be kept
    assert set(kept.deltas) == {"features.0.weight", "features.0.bias"}
    kept = _top_layers(tau, 0.4, base)
    assert {k.rpartition(".")[0] for k in kept.deltas} == {"features.0", "head.1"}
    with pytest.raises(ArtifactError, match="does not fit"):
        TaskVector({"nope.weight": torch.zeros(1)}).layer_norms(base)


def test_target_projection_data_and_the_projection():
    import synth
    from unbackdoor.defenses.tbar import TBAR, TriggerSpec, _remove_clean_component

    data = synth.blobs(40, classes=4)
    spec = TriggerSpec(lambda x, i: x.clamp(min=0.5), lambda y: torch.zeros_like(y), "test", 0)
    defense = TBAR()
    stamped, relabelled = defense.stamped(data, spec), defense.stamped(data, spec, stamp=False)
    assert len(stamped) == len(relabelled) == 30 and (relabelled.labels == 0).all()
    assert torch.equal(relabelled.images, data.images[data.labels != 0])  # not stamped
    assert not torch.equal(stamped.images, relabelled.images)
    a, b = TaskVector.between(net(0), net(1)), TaskVector.between(net(0), net(2))
    p = _remove_clean_component(a, b)
    for k, v in p.deltas.items():  # orthogonal to the projected-out vector, layer by layer
        assert float((v * b.deltas[k]).sum()) == pytest.approx(0.0, abs=1e-4)
    assert TBAR(clean_projection=True).clean_projection == "task"  # the first form
    assert TBAR(clean_projection=False).clean_projection == "none"
    from unbackdoor.errors import ConfigError

    with pytest.raises(ConfigError, match="recalibrate"):
        TBAR(recalibrate="all")
    with pytest.raises(ConfigError, match="clean_projection"):
        TBAR(clean_projection="clean")


def test_recalibrate_batchnorm_and_refit_output_bias():
    import torch.nn.functional as F

    import synth
    from unbackdoor.defenses.tbar import recalibrate_batchnorm, refit_output_bias
    from unbackdoor.eval.loop import predict

    data = synth.blobs(256, classes=4)
    model = net(0).eval()
    assert recalibrate_batchnorm(model, data, 64) == 2 and not model.training
    bn = model.features[1]
    with torch.no_grad():  # 4 equal batches: the running mean is the data's mean
        act = model.features[0](model.normalize(data.float_images()))
    assert torch.allclose(bn.running_mean, act.mean((0, 2, 3)), atol=1e-4)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 4  # the count restarts
    with torch.no_grad():
        model.head[3].bias[0] -= 30.0  # class 0 is never predicted any more
    assert not (predict(model, data) == 0).any()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = data.float_images()
    with torch.no_grad():
        loss_before = F.cross_entropy(model(x), data.labels)
    delta = refit_output_bias(model, data)
    assert delta.shape == (4,) and float(delta[0]) > 10
    with torch.no_grad():
        assert F.cross_entropy(model(x), data.labels) < loss_before
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.3.bias"}  # only the output biases move


def test_recalibration_reaches_the_fast_nets_shift_only_batchnorm():
    """The fast net's BatchNorm has no scale and is not a ``_BatchNorm``; its head has no bias.
    Recalibration must still reach its running statistics, and the report says what moved."""
    import synth
    from unbackdoor.defenses.tbar import recalibrate_batchnorm, recalibration_scope
    from unbackdoor.models.norms import batch_norms

    data = synth.blobs(96, classes=4, size=16)
    model = net(0, "fastnet").eval()
    bns = batch_norms(model)
    assert bns and all(type(m).__name__ == "FrozenScaleBatchNorm" for m in bns)
    first = bns[0]
    with torch.no_grad():
        first.running_mean.fill_(5.0)
    momentum = first.momentum
    assert recalibrate_batchnorm(model, data, 32) == len(bns) and not model.training
    acts = {}
    hook = first.register_forward_pre_hook(lambda m, a: acts.setdefault("x", a[0].detach()))
    with torch.no_grad():
        model(data.float_images())
    hook.remove()
    # three equal batches: the running mean is the data's mean of the layer's input
    assert torch.allclose(first.running_mean, acts["x"].mean((0, 2, 3)), atol=1e-4)
    assert first.momentum == momentum
    assert recalibration_scope(model, "bn+bias") == {
        "batchnorm_layers": len(bns),
        "output_bias": False,
    }
    assert recalibration_scope(model, "none") == {"batchnorm_layers": 0, "output_bias": False}
    # a pass that fails leaves the momenta and the mode as they were
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(model, synth.blobs(8, classes=4, channels=3, size=16), 4)
    assert first.momentum == momentum and not model.training
    # BI-BAU's negate_first keeps the calibrated behaviour: PyTorch BatchNorms only
    with torch.no_grad():
        first.running_mean.fill_(5.0)
    assert recalibrate_batchnorm(model, data, 32, all_norms=False) == 0
    assert float(first.running_mean[0]) == 5.0


def test_tbar_says_when_nothing_was_applied_and_refuses_params_that_name_nothing():
    from unbackdoor.defenses import create_defense
    from unbackdoor.defenses.tbar import _result_text

    scope = {"batchnorm_layers": 3, "output_bias": False}
    text = _result_text(0.0, "no alpha kept the accuracy: smallest alpha", scope, 5)
    assert "not applied" in text and "model unchanged" in text and "removed" not in text
    text = _result_text(1.5, "smallest alpha meeting both", scope, 5)
    assert text == (
        "backdoor removed along the trigger vector, alpha 1.5, "
        "3 BatchNorm layers recalibrated, repaired (5 clean epochs)"
    )
    model = net(0)
    with pytest.raises(ConfigError, match=r"\['featurs.0.'\] match no parameter.*features"):
        create_defense("tbar", params=["features.0.", "featurs.0."]).key_filter(model)
    with pytest.raises(ConfigError, match="an empty list"):
        create_defense("tbar", params=[]).key_filter(model)
    with pytest.raises(ConfigError, match="no linear layer"):
        create_defense("tbar", params="no_head").key_filter(torch.nn.Conv2d(1, 2, 3))
    for options, named in [({"batch_size": 0}, "batch_size=0"), ({"inversion_steps": 0}, "inv")]:
        with pytest.raises(ConfigError, match=named):
            create_defense("tbar", **options)
    with pytest.raises(ConfigError, match="lr=0"):
        create_defense("nc", lr=0)


def test_repair_fine_tunes_each_negated_candidate_on_clean_data():
    import synth
    from unbackdoor.defenses.tbar import TBAR
    from unbackdoor.errors import ConfigError
    from unbackdoor.eval.metrics import evaluate

    with pytest.raises(ConfigError, match="repair_epochs"):
        TBAR(repair_epochs=-1)
    data = synth.blobs(256, classes=4)
    theta_b = net(0).eval()
    tau = TaskVector.between(theta_b, net(1))  # a large, arbitrary direction
    plain = TBAR(recalibrate="none", repair_epochs=0, device="cpu")
    repair = TBAR(recalibrate="none", repair_epochs=3, repair_lr=0.05, device="cpu")
    for d in (plain, repair):  # alpha 0 is the model itself, repaired or not
        same = d.repaired(theta_b, tau, 0.0, data)
        assert all(
            torch.equal(a, b)
            for a, b in zip(same.state_dict().values(), theta_b.state_dict().values(), strict=True)
        )
    hurt = plain.repaired(theta_b, tau, 2.0, data)
    fixed = repair.repaired(theta_b, tau, 2.0, data)
    assert not fixed.training and not theta_b.training
    assert evaluate(fixed, data).clean_acc > evaluate(hurt, data).clean_acc + 0.15


def test_repair_distill_pulls_the_candidate_towards_the_backdoored_models_outputs():
    import synth
    from unbackdoor.data.loader import Batch
    from unbackdoor.defenses.tbar import TBAR
    from unbackdoor.errors import ConfigError
    from unbackdoor.train.losses import cross_entropy_with_teacher, kl_to_teacher

    with pytest.raises(ConfigError, match="repair_distill"):
        TBAR(repair_distill=-0.5)
    data = synth.blobs(256, classes=4)
    x = data.images.float() / 255
    theta_b = net(0).eval()
    before = {k: v.clone() for k, v in theta_b.state_dict().items()}
    # the term is zero when the student is the teacher, so the loss is the cross-entropy
    loss = cross_entropy_with_teacher(theta_b, 1.0)
    batch = Batch(x[:32], data.labels[:32], torch.arange(32))
    with torch.no_grad():
        ce = F.cross_entropy(theta_b(x[:32]), data.labels[:32])
        assert loss(theta_b, batch).item() == pytest.approx(ce.item(), rel=1e-5)

    tau = TaskVector.between(theta_b, net(1))
    kw = {"recalibrate": "none", "repair_epochs": 3, "repair_lr": 0.05, "device": "cpu"}
    plain, distilled = TBAR(**kw), TBAR(**kw, repair_distill=1.0)
    candidates = [d.repaired(theta_b, tau, 2.0, data) for d in (plain, distilled)]
    with torch.no_grad():
        teacher = theta_b(x)
        gaps = [kl_to_teacher(c(x), teacher).item() for c in candidates]
    assert gaps[1] < 0.5 * gaps[0], gaps
    assert all(torch.equal(v, before[k]) for k, v in theta_b.state_dict().items())
    assert all(p.requires_grad for p in theta_b.parameters())


# --- the fine-tuning regime: TBAR end to end, and the disentanglement analysis -----------------


@pytest.fixture(scope="module")
def mnist_ft_backdoor(mnist_clean, tmp_path_factory):
    """BadNets implanted by fine-tuning the clean ``mnist_clean`` (the task-arithmetic regime).

    ASR about 94%: at the recipe's learning rate the backdoor saturates (loss ~1e-4 on stamped
    images) and SGD fine-tuning yields an almost empty trigger vector.
    """
    from unbackdoor.attacks.pipeline import attack_model

    out = tmp_path_factory.mktemp("zoo") / "mnist_badnets_ft"
    trained, _ = attack_model(
        "mnist",
        None,
        "badnets",
        rate=0.1,
        init=mnist_clean,
        epochs=1,
        train_samples=3000,
        batch_size=64,
        lr=0.01,  # a fine-tuning step (the recipe's 0.05 retrains and saturates the backdoor)
        out=out,
        seed=1,
        picture=False,
    )
    assert trained.metrics.asr > 0.85, trained.metrics
    return out


@pytest.mark.parametrize(
    ("linearized", "bf16"), [(False, False), (True, False), (False, True)], ids=str
)
def test_known_attack_tbar_removes_a_finetuned_backdoor(
    mnist_ft_backdoor, tmp_path, linearized, bf16
):
    import unbackdoor
    from unbackdoor.attacks import load_attack
    from unbackdoor.unlearn import unlearn_artifact

    out = tmp_path / "tbar"
    _, report = unlearn_artifact(
        mnist_ft_backdoor,
        "tbar",
        out=out,
        clean_samples=500,
        known_attack=True,
        linearized=linearized,
        bf16=bf16,
    )
    assert report.known_attack and report.backdoor_found
    assert report.diagnostics["trigger_source"] == "known attack (attack.json)"
    assert (out / "alpha_sweep.png").is_file()
    rec = load_attack(mnist_ft_backdoor)
    test = unbackdoor.load_dataset("mnist", "test").sample(2000, 0)
    before, after = (
        unbackdoor.evaluate(
            unbackdoor.load_model(d)[0], test, trigger=rec.trigger, attack_labels=rec.attack_labels
        )
        for d in (mnist_ft_backdoor, out)
    )
    assert before.asr > 0.85
    assert after.asr < 0.1, (report.diagnostics["alpha"], after)
    assert after.clean_acc > 0.9 * before.clean_acc


def test_disentanglement_error_definition():
    import synth
    from unbackdoor.analyze import weight_disentanglement_error

    data = synth.blobs(64, classes=4)
    base = net(0).eval()
    tau_c = TaskVector.between(base, net(1))
    zero = tau_c * 0.0
    trig = data.subset(range(32))
    r = weight_disentanglement_error(base, tau_c, zero, data, trig, [-1.0, 0.0, 1.0], [0.0, 2.0])
    # with a zero trigger vector, the joint model is the clean-edited one: no clean-input
    # disagreement, and on triggered inputs only the clean vector's own effect (none at a_c 0)
    assert r.clean_term == [[0.0, 0.0]] * 3 and r.trigger_term[1] == [0.0, 0.0]
    assert r.trigger_term[0][0] == r.trigger_term[0][1] and len(r.clean_acc) == 3
    r = weight_disentanglement_error(base, tau_c, tau_c, data, trig, [0.0, 1.0], [0.0, 1.0])
    assert r.xi[0][0] == 0.0  # theta_0 alone agrees with itself
    assert r.xi[1][1] == pytest.approx(r.clean_term[1][1] + r.trigger_term[1][1])


def test_analyze_disentanglement_command(mnist_ft_backdoor, tmp_path, capsys):
    import json

    from unbackdoor.cli import main

    out = tmp_path / "xi"
    args = ["analyze", "disentanglement", str(mnist_ft_backdoor), "--known-attack"]
    args += ["--clean-samples", "300", "--alphas=-1,0,1", "--option", "epochs=1"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trigger_source"].startswith("known attack")
    assert set(summary["xi_tbar_row"]) == {"-1.0", "0.0", "1.0"}
    saved = json.loads((out / "disentanglement.json").read_text())
    assert len(saved["xi"]) == 3 and len(saved["xi"][0]) == 3
    assert saved["xi"][1][1] == 0.0  # alpha_c = alpha_t = 0 is the model itself
    assert (out / "disentanglement.png").is_file()
    assert main([*args[:3], "--alphas", "a,b", "--out", str(out)]) == 2
    assert "--alphas" in capsys.readouterr().err


def test_unknown_attack_passes_budget_prior_and_batch_to_every_family(monkeypatch):
    import synth
    import unbackdoor.defenses.tbar as tbar_mod

    seen = []

    def fake(model, data, cfg, **k):
        seen.append((cfg.family, cfg.budget_prior, cfg.batch_size))
        return _fake_inversion([10.0, 11.0, 9.5, 10.5])

    monkeypatch.setattr(tbar_mod, "invert", fake)
    data = synth.blobs(200, classes=4)
    defense = tbar_mod.TBAR(
        epochs=1,
        alphas=(0.0,),
        alpha_max=None,
        plot=False,
        budget_prior=False,
        inversion_batch_size=5,
    )
    defense.run(net(0), *data.split(0.8, 0))
    assert list(dict.fromkeys(f for f, _, _ in seen)) == ["mask_pattern", "additive", "warp"]
    assert not any(p for _, p, _ in seen)
    assert {b for _, _, b in seen} == {5}
