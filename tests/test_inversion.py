"""Trigger inversion (issue 4): recovers a planted BadNets trigger's location and target."""

import pytest
import torch

import unbackdoor
from unbackdoor.errors import ConfigError
from unbackdoor.inversion import InversionConfig, MaskPattern, invert, mad_anomaly
from unbackdoor.inversion.families import Additive, Smooth, Warp
from unbackdoor.inversion.invert import InversionResult


def test_mad_anomaly_flags_the_small_one():
    sizes = torch.tensor([40.0, 35.0, 5.0, 50.0, 45.0, 38.0])
    a = mad_anomaly(sizes)
    assert int(a.argmax()) == 2 and a[2] > 2 and (a[[0, 1, 3, 4, 5]] < 2).all()


def test_additive_anomaly_reads_the_fooling_rate():
    # fixed-budget additive triggers all have the same size; the reachable class stands out
    # by how many images the budget moves (numbers from a WaNet MNIST model and a clean one)
    fam = Additive(10, (1, 4, 4))
    sizes = torch.full((10,), 2.6)
    wanet = torch.tensor([0.62, 0.01, 0.01, 0.03, 0.07, 0.0, 0.0, 0.02, 0.04, 0.02])
    clean = torch.tensor([0.014, 0.018, 0.024, 0.028, 0.024, 0.021, 0.010, 0.035, 0.014, 0.028])
    res = InversionResult(fam, list(range(10)), sizes, wanet, torch.ones(10))
    a = res.anomaly_index()
    assert int(a.argmax()) == 0 and a[0] > 2
    res = InversionResult(fam, list(range(10)), sizes, clean, torch.ones(10))
    assert res.anomaly_index().max() < 2


def test_effect_size_is_the_cost_ratio_to_the_median_class():
    fam = MaskPattern(5, (1, 4, 4))
    sizes = torch.tensor([2.0, 10.0, 12.0, 8.0, 10.0])
    res = InversionResult(fam, list(range(5)), sizes, torch.ones(5), torch.ones(5))
    assert res.effect_size().tolist() == pytest.approx([5.0, 1.0, 10 / 12, 1.25, 1.0])
    # additive: odds against fooling, median odds 99 (1% fooled) vs 1 (50% fooled)
    fam = Additive(5, (1, 4, 4))
    fooling = torch.tensor([0.5, 0.01, 0.01, 0.02, 0.005])
    res = InversionResult(fam, list(range(5)), torch.ones(5), fooling, torch.ones(5))
    assert float(res.effect_size()[0]) == pytest.approx(99.0)


def test_limit_size_projects_only_the_oversized_masks():
    fam = MaskPattern(3, (1, 8, 8))
    with torch.no_grad():
        fam.mask_logit.copy_(torch.tensor([-1.0, -4.0, 0.0]).view(3, 1, 1, 1).expand(3, 1, 8, 8))
    before = fam.size().detach().clone()
    fam.limit_size(5.0)
    after = fam.size().detach()
    assert after[0] == pytest.approx(5.0, rel=1e-4) and after[2] == pytest.approx(5.0, rel=1e-4)
    assert after[1] == before[1]  # already within the budget: untouched


def test_max_size_holds_during_inversion(mnist_backdoor):
    model, _ = unbackdoor.load_model(mnist_backdoor)
    data = unbackdoor.load_dataset("mnist", "train").sample(256, 1)
    cfg = InversionConfig(steps=30, max_size=3.0, lambda_init=0.0)
    res = invert(model, data, cfg, classes=[0, 1], seed=0)
    assert (res.sizes <= 3.0 + 1e-3).all()


def test_scaled_steps_keep_an_additive_trigger_off_the_corners_of_its_box(mnist_backdoor):
    # lr 0.1 in pixel units crosses an eps-0.05 box in one step: every pixel that has a
    # gradient ends on +-eps; scaled to eps, a step moves it by a tenth of the box
    model, _ = unbackdoor.load_model(mnist_backdoor)
    data = unbackdoor.load_dataset("mnist", "train").sample(256, 1)
    corners = {}
    for scaled in (False, True):
        cfg = InversionConfig(family="additive", steps=1, eps=0.05, scaled_steps=scaled)
        res = invert(model, data, cfg, classes=[0, 1], seed=0)
        d = res.family.delta.detach()
        assert d.abs().max() <= 0.05 + 1e-6
        corners[scaled] = float((d.abs() > 0.05 - 1e-4).float().mean())
    assert corners[False] > 0.5 and corners[True] < 0.01, corners


def test_untargeted_fooling_ignores_the_models_own_errors():
    from unbackdoor.data import ImageDataset
    from unbackdoor.inversion import fooling_rate

    # a model that always says class 0: right on the class-0 half, wrong on the rest
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    images = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(20) % 2, ["a", "b"], "toy")
    fam = MaskPattern(1, (1, 4, 4))
    with torch.no_grad():
        fam.mask_logit.fill_(-30.0)  # a trigger that changes nothing
    assert float(fooling_rate(model, fam, data, [-1], targeted=False)[0]) == 0.0


def test_mask_pattern_family_batches_candidates():
    fam = MaskPattern(3, (1, 8, 8))
    x = torch.rand(6, 1, 8, 8)
    k = torch.tensor([0, 1, 2, 0, 1, 2])
    out = fam.stamp(x, k)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[0], fam.stamp(x[:1], 0)[0])
    assert fam.prior().shape == (3,)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="family='blob'"):
        InversionConfig(family="blob").validate()


def test_inversion_recovers_badnets_location_and_target(mnist_backdoor):
    model, _ = unbackdoor.load_model(mnist_backdoor)
    data = unbackdoor.load_dataset("mnist", "train").sample(300, 5)
    res = invert(model, data, InversionConfig(steps=120, batch_size=16), seed=0)
    anomaly = res.anomaly_index()
    assert int(anomaly.argmax()) == 0 and anomaly[0] > 2  # the planted target
    assert res.fooling[0] > 0.8
    mask = res.family.mask[0, 0]
    ys, xs = torch.nonzero(mask > 0.5 * mask.max(), as_tuple=True)
    # BadNets default: 3x3 patch at rows/cols 24..26 (bottom right, margin 1)
    assert ys.float().mean() > 20 and xs.float().mean() > 20


def test_calibrated_additive_budget_halves_until_the_median_class_is_hard(mnist_backdoor):
    from unbackdoor.inversion import invert_calibrated

    model, _ = unbackdoor.load_model(mnist_backdoor)
    data = unbackdoor.load_dataset("mnist", "train").sample(256, 1)
    cfg = InversionConfig(family="additive", steps=20, eps=1.0)  # eps 1: every class reachable
    res, trail = invert_calibrated(model, data, cfg, seed=0)
    assert trail[0] == {"eps": 1.0, "median_fooling": trail[0]["median_fooling"]}
    assert trail[0]["median_fooling"] > 0.5
    assert [t["eps"] for t in trail] == [1.0 / 2**i for i in range(len(trail))]
    assert trail[-1]["median_fooling"] <= 0.5 or len(trail) == 4
    assert all(t["median_fooling"] > 0.5 for t in trail[:-1])  # halved only while saturated
    assert res.family.eps == trail[-1]["eps"]
    _, fixed = invert_calibrated(model, data, cfg, auto_eps=False, seed=0)
    assert [t["eps"] for t in fixed] == [1.0]
    _, masks = invert_calibrated(model, data, InversionConfig(steps=5), seed=0)
    assert masks == []


def test_detect_tries_the_additive_family_only_when_the_mask_finds_nothing():
    from unbackdoor.inversion import detect

    k = 10
    plain = torch.full((k,), 20.0) + torch.arange(k)  # no class stands out
    cheap = plain.clone()
    cheap[3] = 1.0  # class 3 is 20x cheaper to reach
    calls = []

    def scripted(mask_sizes, fooling):
        def fake(model, data, cfg, **kw):
            calls.append(cfg.family)
            if cfg.family == "mask_pattern":
                return InversionResult(
                    MaskPattern(k, (1, 4, 4)), list(range(k)), mask_sizes, torch.ones(k), plain
                )
            return InversionResult(
                Additive(k, (1, 4, 4), eps=cfg.eps), list(range(k)), plain, fooling, plain
            )

        return fake

    quiet = torch.full((k,), 0.01)
    loud = quiet.clone()
    loud[7] = 0.6
    cfg = InversionConfig(steps=1)
    det = detect(None, None, cfg, invert_fn=scripted(cheap, quiet))
    assert det.found and det.family == "mask_pattern" and det.verdict.klass == 3
    assert calls == ["mask_pattern"] and det.tried == ["mask_pattern"]
    calls.clear()
    det = detect(None, None, cfg, invert_fn=scripted(plain, loud))
    assert det.found and det.family == "additive" and det.verdict.klass == 7
    assert calls == ["mask_pattern", "additive"] and set(det.verdicts) == set(det.tried)
    calls.clear()
    det = detect(None, None, cfg, invert_fn=scripted(plain, quiet))
    assert not det.found and det.tried == ["mask_pattern", "additive"]
    calls.clear()
    det = detect(None, None, cfg, stop_at_first=True, invert_fn=scripted(plain, loud))
    assert not det.found and calls == ["mask_pattern"]
    with pytest.raises(ConfigError, match="family"):
        detect(None, None, cfg, family="blob")


def _three_families(plain, mask_sizes, additive, warp, calls, log=None):
    """A scripted ``invert_fn``: the mask family costs ``mask_sizes``, the additive and warp
    families fool ``additive`` and ``warp`` of the images; each call is logged in ``calls``
    (``log(cfg)``; default: the family and the warp budget)."""
    k = len(plain)

    def fake(model, data, cfg, **kw):
        calls.append(log(cfg) if log else (cfg.family, cfg.warp_shift))
        if cfg.family == "mask_pattern":
            fam = MaskPattern(k, (1, 4, 4))
            return InversionResult(fam, list(range(k)), mask_sizes, torch.ones(k), plain)
        if cfg.family == "additive":
            fam = Additive(k, (1, 4, 4), eps=cfg.eps)
            return InversionResult(fam, list(range(k)), plain, additive, plain)
        fam = Warp(k, (1, 4, 4), eps=cfg.warp_shift)
        return InversionResult(fam, list(range(k)), plain, warp, plain)

    return fake


def test_detect_tries_the_warp_family_last_when_asked():
    from unbackdoor.inversion import detect

    k = 10
    plain = torch.full((k,), 20.0) + torch.arange(k)
    quiet = torch.full((k,), 0.01)
    loud = quiet.clone()
    loud[4] = 0.7
    calls = []

    fake = _three_families(plain, plain, quiet, loud, calls)

    cfg = InversionConfig(steps=1, warp_shift=0.75)
    families = ("mask_pattern", "additive", "warp")
    det = detect(None, None, cfg, auto_families=families, auto_eps=False, invert_fn=fake)
    assert det.found and det.family == "warp" and det.verdict.klass == 4
    assert calls == [("mask_pattern", 0.75), ("additive", 0.75), ("warp", 0.75)]
    assert det.eps_trail == [
        {"eps": 0.1, "median_fooling": 0.01},
        {"warp_shift": 0.75, "median_fooling": 0.01},
    ]
    # a defense's settings: the same order (warp last, as warp_shift is set), or the families asked
    from unbackdoor.defenses.bibau import BIBAU
    from unbackdoor.inversion.detect import detect_with

    settings = BIBAU(warp_shift=0.75, inversion_batch_size=3)
    for asked, tried in ((None, families), (("additive", "warp"), ("additive", "warp"))):
        calls.clear()
        det = detect_with(settings, None, None, families=asked, auto_eps=False, invert_fn=fake)
        assert det.found and det.family == "warp" and tuple(det.tried) == tried
        assert [c[0] for c in calls] == list(tried)
    calls.clear()  # families asked are tried even where the defense fixes its own family
    fixed = BIBAU(family="mask_pattern", warp_shift=0.75, inversion_batch_size=3)
    det = detect_with(fixed, None, None, families=("warp",), auto_eps=False, invert_fn=fake)
    assert det.found and [c[0] for c in calls] == ["warp"]
    calls.clear()
    assert not detect(None, None, cfg, invert_fn=fake).found  # default: no warp
    assert [c[0] for c in calls] == ["mask_pattern", "additive"]
    with pytest.raises(ConfigError, match="auto_families"):
        detect(None, None, cfg, auto_families=("blob",), invert_fn=fake)


def test_warp_family_moves_pixels_within_its_budget():
    fam = Warp(2, (3, 8, 8), eps=1.0)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        fam.control.zero_()
    assert torch.allclose(fam.stamp(x, 0), x, atol=1e-5)  # no displacement: the identity
    with torch.no_grad():
        fam.control[1, 0] = 1.0  # class 1: every pixel samples one pixel to its right
        fam.control[0] = 5.0  # out of the budget
    fam.project()
    assert fam.control.abs().max() <= 1.0
    shifted = fam.stamp(x, 1)
    assert torch.allclose(shifted[..., :-1], x[..., 1:], atol=1e-5)
    both = fam.stamp(x, torch.tensor([0, 1, 0, 1]))
    assert torch.allclose(both[1], shifted[1]) and both.shape == x.shape
    assert fam.field().abs().max() <= 1.0 and fam.size().shape == (2,)
    assert fam.images()["trigger"].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="eps"):
        Warp(1, (1, 8, 8), eps=0.0)


def test_smooth_family_is_bounded_and_low_frequency():
    fam = Smooth(3, (3, 32, 32), eps=0.1, grid=4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the global RNG made this order-dependent
    with torch.no_grad():
        fam.control.normal_(0, 1.0, generator=g)
    fam.project()
    d = fam.delta
    assert d.shape == (3, 3, 32, 32) and d.abs().max() <= 0.1 + 1e-6
    # a 4 x 4 lattice per channel: the energy sits at the lowest frequencies (49 of 1,024
    # bins hold 0.90-0.94 of it over 40 draws), unlike a free additive trigger's (about 5%)
    spec = torch.fft.fft2(d).abs().pow(2)
    f = torch.fft.fftfreq(32).abs()
    low = (f[:, None] <= 3 / 32) & (f[None, :] <= 3 / 32)
    assert spec[..., low].sum() / spec.sum() > 0.9  # 0.914 for this draw
    free = torch.fft.fft2(0.1 * (2 * torch.rand(3, 3, 32, 32, generator=g) - 1)).abs().pow(2)
    assert free[..., low].sum() / free.sum() < 0.1
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        fam.control.fill_(0.05)  # a constant lattice: a constant shift
    assert torch.allclose(fam.stamp(x, 1), (x + 0.05).clamp(0, 1), atol=1e-5)
    assert fam.images()["trigger"].shape == (3, 3, 32, 32) and fam.size().shape == (3,)
    with pytest.raises(ValueError, match="grid"):
        Smooth(1, (1, 8, 8), grid=1)


def test_smooth_inversion_runs_with_its_budget_searched():
    from unbackdoor.inversion import invert_calibrated

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    data = unbackdoor.load_dataset("mnist", "train").sample(64, 0)
    cfg = InversionConfig(family="smooth", steps=3, eps=0.2, smooth_grid=3)
    res, trail = invert_calibrated(model, data, cfg, seed=0)
    assert isinstance(res.family, Smooth) and res.family.control.shape[-1] == 3
    assert trail and "eps" in trail[0] and res.family.eps == trail[-1]["eps"]
    assert res.fooling.shape == (10,) and ((res.fooling >= 0) & (res.fooling <= 1)).all()
    with pytest.raises(ConfigError, match="smooth_grid"):
        InversionConfig(family="smooth", smooth_grid=1).validate()


def test_warp_inversion_singles_out_a_wanet_target(mnist_wanet):
    model, _ = unbackdoor.load_model(mnist_wanet)
    data = unbackdoor.load_dataset("mnist", "train").sample(256, 1)
    cfg = InversionConfig(family="warp", steps=60, warp_shift=1.0, scaled_steps=True)
    res = invert(model, data, cfg, seed=0)
    verdict = res.verdict()
    assert verdict.found and verdict.klass == 0, verdict.as_dict()
    others = torch.cat([res.fooling[:0], res.fooling[1:]])
    assert res.fooling[0] > 0.5 and others.max() < 0.25


def test_shared_targeted_pgd_stays_in_the_ball_and_reaches_the_target_of_both_models():
    from torch import nn

    from unbackdoor.inversion.per_sample import shared_targeted_pgd

    torch.manual_seed(0)
    a = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()
    b = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()
    x = torch.rand(64, 3, 4, 4)
    gen = torch.Generator().manual_seed(0)
    adv, rate = shared_targeted_pgd(a, b, x, 3, eps=0.02, steps=3, generator=gen)
    assert (adv - x).abs().max() <= 0.02 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    small = rate
    adv, rate = shared_targeted_pgd(a, b, x, 3, eps=1.0, steps=20, generator=gen)
    both = (a(adv).argmax(1) == 3) & (b(adv).argmax(1) == 3)
    assert rate == pytest.approx(float(both.float().mean())) and rate > 0.9 > small
    with pytest.raises(ValueError, match="eps must be > 0"):
        shared_targeted_pgd(a, b, x, 3, eps=0.0)


def test_collapse_unlearns_a_copy_and_shares_out_the_forgotten_images(mnist_backdoor):
    from unbackdoor.inversion.collapse import collapse
    from unbackdoor.unlearn import split_defender_data

    data = unbackdoor.load_dataset("mnist", "train").sample(600, 2)
    train, held = split_defender_data(data, 0.2, 0)
    model, _ = unbackdoor.load_model(mnist_backdoor)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = collapse(model, train, held)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy
    assert all(a < 0.5 for a in res.accuracy) and len(res.per_repeat) == 3
    assert res.shares.sum() == pytest.approx(1.0, abs=1e-4)
    call = res.verdict(0.3, 2.0, 0.6)
    assert call["class"] == int(res.shares.argmax()) and 0 <= call["class"] < 10
    assert call["share"] == pytest.approx(float(res.shares.max()))
    # No test of *which* class leads: it depends on the fixture, which depends on the thread
    # count. With two threads the backdoored fixture collapses onto its target 0, but with one
    # onto class 4 (72%, 3.8x, breadth 0.78: a confident wrong call), and the clean twin's
    # sink class passes the rule with two threads (58%, 2.06x, 0.625). That is why BI-BAU
    # keeps the check off by default.
    with pytest.raises(ConfigError, match="threshold"):
        collapse(model, train, held, threshold=1.5)


def test_collapse_ascends_only_on_what_the_caller_left_trainable(monkeypatch):
    # A CLIP head's temperature and text tower are frozen by the caller (FrozenText); the
    # ascent must not move them, or it would flatten the logits instead of forgetting.
    from synth import blobs
    from unbackdoor.inversion.collapse import collapse

    data = blobs(200, classes=4, size=8)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Linear(16, 4))
    net[1].requires_grad_(False)
    seen: list[list[torch.Tensor]] = []
    real_sgd = torch.optim.SGD

    def spy(params, **kw):
        params = list(params)
        seen.append(params)
        return real_sgd(params, **kw)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    collapse(net, data, data, repeats=1, max_steps=3)
    assert [tuple(p.shape) for p in seen[0]] == [(4, 16), (4,)]
    assert not net[1].weight.requires_grad  # the caller's model keeps its flags
    net.requires_grad_(False)  # nothing trainable: the whole copy is ascended on
    res = collapse(net, data, data, repeats=1, max_steps=3, keep_model=True)
    assert len(seen[1]) == 4
    kept = res.model  # the collapsed copy itself, frozen, in eval mode
    assert kept is not None and kept is not net and not kept.training
    assert not torch.equal(kept[2].weight, net[2].weight)
    assert not any(p.requires_grad for p in kept.parameters())
    assert collapse(net, data, data, repeats=1, max_steps=2).model is None


def test_collapse_breadth_tells_a_target_from_a_natural_sink():
    from unbackdoor.inversion.collapse import CollapseResult

    k = 5
    target = torch.zeros(k, k)
    target[1:, 0] = 10.0  # every other class's forgotten images go to class 0
    target[0, 1] = 3.0
    sink = torch.zeros(k, k)
    sink[[1, 2], 0] = 20.0  # class 0 draws heavily from two look-alikes only
    sink[[0, 4], 3] = 6.0
    sink[3, 4] = 5.0
    for errors, breadth, found in ((target, 1.0, True), (sink, 0.5, False)):
        shares = errors.sum(0) / errors.sum()
        res = CollapseResult(shares, [shares.tolist()], [10], [0.45], errors)
        assert float(res.breadth()[0]) == pytest.approx(breadth)
        call = res.verdict(0.3, 2.0, 0.75)
        assert call["class"] == 0 and call["checks"]["share"] and call["found"] is found
        assert call["checks"]["breadth"] is found
    assert "breadth" not in CollapseResult(shares, [], [], []).verdict(0.3, 2.0)
    with pytest.raises(ValueError, match="error counts"):
        CollapseResult(shares, [], [], []).breadth()


def _corner_model() -> torch.nn.Module:
    """A linear classifier on 1 x 8 x 8 images that a bright top-left 2 x 2 corner sends to
    class 3 (the planted 'backdoor'), and that otherwise reads the mean brightness."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.zero_()
        net[1].weight[:, :] = 0.1 * torch.arange(10).float().view(10, 1) / 10
        corner = torch.zeros(8, 8)
        corner[:2, :2] = 1
        net[1].weight[3] += 20 * corner.flatten()
        net[1].bias[3] = -30.0
    return net


def test_refit_pattern_keeps_the_place_and_fits_the_pattern_to_the_model():
    import synth
    from unbackdoor.inversion.refit import refit_pattern

    model = _corner_model()
    before = [p.detach().clone() for p in model.parameters()]
    data = synth.blobs(120, classes=10, size=8)
    fam = MaskPattern(1, (1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the place is right (the corner), the pattern dark: it fools nobody
        fam.mask_logit.fill_(-8.0)
        fam.mask_logit[0, 0, :2, :2] = 8.0
        fam.pattern_logit.fill_(-6.0)
    stamp_pred = lambda f: model(f.stamp(data.float_images(), 0)).argmax(1)  # noqa: E731
    assert (stamp_pred(fam) == 3).float().mean() < 0.2
    out = refit_pattern(model, data, fam, 3, 60, lr=0.3)
    assert torch.equal(out.mask_logit, fam.mask_logit)  # the place is kept
    assert (stamp_pred(out)[data.labels != 3] == 3).float().mean() > 0.9
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters()) and model.training
    grown = refit_pattern(model, data, fam, 3, 1, grow=1)
    assert (grown.mask > 0.5).sum() == 9  # the 2 x 2 square dilated by one pixel: 3 x 3
    with pytest.raises(ConfigError, match="one-trigger mask_pattern"):
        refit_pattern(model, data, MaskPattern(2, (1, 8, 8)), 3, 1)
    with pytest.raises(ConfigError, match="target=12"):
        refit_pattern(model, data, fam, 12, 1)


def test_budget_prior_off_leaves_a_budgeted_trigger_only_its_budget():
    import synth

    model = _corner_model()
    data = synth.blobs(120, classes=10, size=8)
    res = {}
    for prior in (True, False):
        cfg = InversionConfig(family="additive", steps=40, eps=1.0, patience=2, budget_prior=prior)
        res[prior] = invert(model, data, cfg, classes=[3, 5], seed=0)
    assert (res[True].lambdas != 0.5).any()  # the schedule moved lambda: the prior acted
    assert (res[False].lambdas == 0).all()
    # with the prior the schedule shrinks the corner's trigger under the fooling it can reach
    assert res[False].fooling[0] > 0.95 > res[True].fooling[0]
    # a mask has no budget: its prior is what keeps it small, with or without the option
    mask = invert(model, data, InversionConfig(steps=5, budget_prior=False), classes=[3])
    assert (mask.lambdas > 0).all()


def test_strong_effect_finds_a_class_the_wide_mad_hides():
    """Most classes never fooled spread the costs, so the target's index stays under 2 though
    it is 231x cheaper than the median class: found only with ``strong_effect``, and only
    while it fools half the images."""
    k = 10
    fooling = torch.tensor([0.7, 1e-4, 1e-4, 1e-4, 1e-4, 0.003, 0.01, 0.02, 0.05, 0.1])
    ones = torch.ones(k)
    res = InversionResult(Additive(k, (1, 4, 4), eps=0.1), list(range(k)), ones, fooling, ones)
    assert res.anomaly_index()[0] < 2 and res.effect_size()[0] > 200
    assert not res.verdict().found
    v = res.verdict(2.0, 4.0, strong_effect=200)
    assert v.found and v.klass == 0 and v.as_dict()["by_effect"] is True
    assert not res.verdict(2.0, 4.0, strong_effect=300).found
    weak = fooling.clone()
    weak[0] = 0.45  # cheap, but fools under half the images
    res = InversionResult(Additive(k, (1, 4, 4), eps=0.1), list(range(k)), ones, weak, ones)
    assert res.effect_size()[0] > 50 and not res.verdict(2.0, 4.0, strong_effect=50).found


def test_min_fooling_drops_a_budgeted_class_that_fools_a_handful_of_images():
    """The false alarm seen on clean MNIST twins at 500 images: most classes sit at the
    fooling floor, the MAD of their costs is zero and one class fooling 1.7% gets an index in
    the millions. ``min_fooling`` asks a budgeted family's class to fool that share itself;
    a mask (whose size grows until it fools) keeps its own half."""
    k = 10
    fooling = torch.full((k,), 0.0025)
    fooling[8] = 0.017
    ones = torch.ones(k)
    res = InversionResult(Additive(k, (1, 4, 4), eps=0.1), list(range(k)), ones, fooling, ones)
    assert res.anomaly_index()[8] > 1e3 and res.verdict().found and res.verdict().klass == 8
    v = res.verdict(min_fooling=0.2)
    assert not v.found and v.checks == {"anomaly index": True, "effect": True, "fooling": False}
    fooling[8] = 0.43  # a blend's target at 3,000 MNIST images (calibration.md)
    assert res.verdict(min_fooling=0.2).found
    mask = InversionResult(MaskPattern(k, (1, 4, 4)), list(range(k)), ones, fooling, ones)
    assert mask.verdict(min_fooling=0.2).checks["fooling"] is False  # masks: half, whatever


def test_strong_effect_option_is_validated():
    from unbackdoor.defenses import create_defense

    for name in ("bibau", "tbar"):
        assert create_defense(name, strong_effect=200).strong_effect == 200
        with pytest.raises(ConfigError, match="strong_effect"):
            create_defense(name, strong_effect=2)  # below min_effect
        with pytest.raises(ConfigError, match="min_fooling"):
            create_defense(name, min_fooling=1.5)


def test_total_variation_prior_smooths_the_pattern():
    """The TV prior on the pattern (NC's smoothness prior) is there and does what it says."""
    import synth
    from unbackdoor.inversion.families import total_variation

    data = synth.blobs(n=128, classes=4, size=12, channels=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 144, 4))

    def tv(weight: float) -> float:
        cfg = InversionConfig(steps=60, batch_size=64, tv_weight=weight)
        res = invert(model, data, cfg, classes=[1], seed=0)
        return float(total_variation(res.family.pattern.detach())[0])

    assert tv(0.5) < 0.5 * tv(0.0)


def test_detect_compares_the_budgeted_families_when_asked():
    """A natural additive shortcut flags a class, the warp family the backdoor (dev WaNet): with
    ``compare_budgeted`` the family whose class stands out most decides, not the first."""
    from unbackdoor.inversion import detect

    k = 10
    plain = torch.full((k,), 20.0) + torch.arange(k)
    cheap = plain.clone()
    cheap[5] = 1.0
    quiet = torch.full((k,), 0.01)
    shortcut, backdoor = quiet.clone(), quiet.clone()
    shortcut[3], backdoor[0] = 0.6, 0.99
    calls = []

    def scripted(mask_sizes, additive, warp):
        return _three_families(plain, mask_sizes, additive, warp, calls, log=lambda c: c.family)

    cfg = InversionConfig(steps=1)
    families = ("mask_pattern", "additive", "warp")
    kw = dict(auto_families=families, auto_eps=False)
    det = detect(None, None, cfg, **kw, invert_fn=scripted(plain, shortcut, backdoor))
    assert det.family == "additive" and det.verdict.klass == 3  # the first that flags
    assert calls == ["mask_pattern", "additive"]
    calls.clear()
    fake = scripted(plain, shortcut, backdoor)
    det = detect(None, None, cfg, **kw, compare_budgeted=True, invert_fn=fake)
    assert calls == list(families) and det.tried == list(families)
    assert det.found and det.family == "warp" and det.verdict.klass == 0
    assert det.result.family.__class__ is Warp
    assert det.verdicts["additive"]["found"] and det.verdicts["additive"]["class"] == 3
    assert det.verdicts["warp"]["anomaly"] > det.verdicts["additive"]["anomaly"]
    # the other way round, the additive family keeps the decision
    det = detect(
        None, None, cfg, **kw, compare_budgeted=True, invert_fn=scripted(plain, backdoor, shortcut)
    )
    assert det.family == "additive" and det.verdict.klass == 0
    # only one budgeted family flags: it decides, as without comparing
    det = detect(
        None, None, cfg, **kw, compare_budgeted=True, invert_fn=scripted(plain, quiet, shortcut)
    )
    assert det.found and det.family == "warp" and det.verdict.klass == 3
    # none flags: no backdoor, the last family's inversion returned as before
    det = detect(
        None, None, cfg, **kw, compare_budgeted=True, invert_fn=scripted(plain, quiet, quiet)
    )
    assert not det.found and det.family == "warp"
    # a mask that flags still decides alone
    calls.clear()
    det = detect(
        None, None, cfg, **kw, compare_budgeted=True, invert_fn=scripted(cheap, shortcut, backdoor)
    )
    assert det.family == "mask_pattern" and det.verdict.klass == 5 and calls == ["mask_pattern"]
    # the defenses pass their option through
    from unbackdoor.defenses.bibau import BIBAU
    from unbackdoor.defenses.tbar import TBAR
    from unbackdoor.inversion.detect import detect_with

    for settings in (BIBAU(compare_families=True), TBAR(compare_families=True)):
        det = detect_with(settings, None, None, auto_eps=False, invert_fn=fake)
        assert det.family == "warp" and det.verdict.klass == 0
    with pytest.raises(ConfigError, match="compare_families"):
        BIBAU(compare_families="yes")
