import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synth import blobs
from unbackdoor.errors import ConfigError, DataError
from unbackdoor.eval import evaluate
from unbackdoor.models import create_model
from unbackdoor.train import TrainConfig, train
from unbackdoor.train.config import TrainConfig as TC
from unbackdoor.train.optim import lr_factor
from unbackdoor.utils.config import from_dict


def tiny_model(classes=4):
    torch.manual_seed(0)
    return create_model(
        "small_cnn", classes, in_channels=1, input_size=(16, 16), width=8, hidden=16
    )


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_learns_a_separable_task():
    data = blobs(n=400)
    model = tiny_model()
    result = train(model, data, TrainConfig(epochs=3, batch_size=32, lr=0.05))
    assert evaluate(model, data).clean_acc > 0.95
    assert len(result.history) == 3 and result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.images_per_second > 0


@pytest.mark.parametrize(
    "opts",
    [
        dict(optimizer="adam", lr=1e-2, schedule="cosine"),
        dict(bf16=True, channels_last=True, ema=0.9),
        dict(label_smoothing=0.1, schedule="constant", grad_clip=1.0),
    ],
)
def test_options_train(opts):
    data = blobs(n=200)
    model = tiny_model()
    train(model, data, TrainConfig(epochs=2, batch_size=32, **{"lr": 0.05, **opts}))
    assert evaluate(model, data).clean_acc > 0.8


def test_same_seed_same_weights():
    data = blobs(n=200)
    a, b = tiny_model(), tiny_model()
    train(a, data, TrainConfig(epochs=1, batch_size=32, seed=5))
    train(b, data, TrainConfig(epochs=1, batch_size=32, seed=5))
    assert torch.equal(params(a), params(b))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = blobs(n=200)
    cfg = TrainConfig(epochs=3, batch_size=32, seed=1)
    full = tiny_model()
    full_result = train(full, data, cfg)

    calls = {"n": 0}

    def interrupt_after_two(epoch, model):
        calls["n"] += 1
        if epoch == 2:
            raise KeyboardInterrupt
        return {}

    first = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        train(first, data, cfg, checkpoint_dir=tmp_path, on_epoch_end=interrupt_after_two)
    resumed = tiny_model()
    result = train(resumed, data, cfg, checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch == 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert torch.allclose(params(full), params(resumed), atol=1e-6)
    # the resumed run reports the whole training, not only the epochs it ran itself
    assert result.resumed_seconds == pytest.approx(sum(h["seconds"] for h in result.history[:1]))
    assert result.wall_time >= result.resumed_seconds > 0
    assert result.train_images == full_result.train_images


def test_resume_with_another_config_is_refused(tmp_path):
    data = blobs(n=100)
    train(tiny_model(), data, TrainConfig(epochs=1, batch_size=32), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="different training config"):
        train(tiny_model(), data, TrainConfig(epochs=1, batch_size=16), checkpoint_dir=tmp_path)


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="epochs=-1"):
        TrainConfig(epochs=-1).validate()
    with pytest.raises(ConfigError, match="optimizer='lbfgs'"):
        TrainConfig(optimizer="lbfgs").validate()
    with pytest.raises(ConfigError, match="unknown key 'lrate'.*did you mean 'lr'"):
        from_dict(TC, {"lrate": 0.1})


def test_wrong_data_is_refused():
    with pytest.raises(DataError, match="4 classes but the model has 3"):
        train(tiny_model(3), blobs(n=50), TrainConfig(epochs=1))
    with pytest.raises(DataError, match="empty"):
        train(tiny_model(), blobs(n=8).subset([]), TrainConfig(epochs=1))
    with pytest.raises(DataError, match="images of shape"):
        train(tiny_model(), blobs(n=50, size=20), TrainConfig(epochs=1))


def test_schedules():
    cfg = TC(schedule="onecycle", warmup=0.25)
    assert lr_factor(cfg, 0, 100) == 0 and lr_factor(cfg, 25, 100) == pytest.approx(1.0)
    assert lr_factor(cfg, 100, 100) == pytest.approx(0.0)
    cos = TC(schedule="cosine", warmup=0.0)
    assert lr_factor(cos, 50, 100) == pytest.approx(0.5)


def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    env = {**os.environ, "UNBACKDOOR_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(worker),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    d0 = (tmp_path / "rank0.txt").read_text().split()
    d1 = (tmp_path / "rank1.txt").read_text().split()
    assert d0[0] == d1[0], "ranks ended with different weights"
    assert int(d0[1]) == 2 * 256  # both ranks count the full epochs after all-reduce
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()


def test_triangle_schedule_and_airbench_options_train():
    cfg = TC(schedule="triangle")
    assert lr_factor(cfg, 0, 100) == pytest.approx(0.2)
    assert lr_factor(cfg, 23, 100) == pytest.approx(1.0)
    assert lr_factor(cfg, 100, 100) == pytest.approx(0.07)
    data = blobs(n=256)
    model = tiny_model()
    opts = dict(
        epochs=3,
        batch_size=32,
        lr=0.05,
        schedule="triangle",
        flip="alternating",
        crop_padding=1,
        lookahead=True,
        lookahead_start=0.2,
        drop_last=True,
    )
    result = train(model, data, TrainConfig(**opts))
    assert result.train_images == 3 * (256 // 32) * 32
    assert evaluate(model, data).clean_acc > 0.9


def test_alternating_flip_flips_each_sample_every_other_epoch():
    from unbackdoor.data.transforms import alternating_flip

    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(8, 1, 1, 1)
    idx = torch.arange(8)
    e0, e1 = alternating_flip(x, idx, 0, 0), alternating_flip(x, idx, 1, 0)
    flipped0 = (e0[:, 0, 0, 0] == 3).tolist()
    flipped1 = (e1[:, 0, 0, 0] == 3).tolist()
    assert all(a != b for a, b in zip(flipped0, flipped1, strict=True))
    assert 0 < sum(flipped0) < 8


def _pgd_accuracy(model, data, eps, steps=10):
    import torch.nn.functional as F

    model.eval()
    x0 = data.images.float() / 255 if data.images.dtype == torch.uint8 else data.images.clone()
    y, x = data.labels, x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        x = (x0 + (x.detach() + 2.5 * eps / steps * g.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_adversarial_training_makes_the_model_robust():
    """FGSM-RS training (``adv_eps``, 0-255 scale) resists a PGD attack that breaks the same
    model trained on clean images."""
    data = blobs(n=400)
    eps = 0.25
    plain, robust = tiny_model(), tiny_model()
    cfg = dict(epochs=4, batch_size=32, lr=0.05)
    train(plain, data, TrainConfig(**cfg))
    train(robust, data, TrainConfig(**cfg, adv_eps=255 * eps))
    assert evaluate(robust, data).clean_acc > 0.6  # chance: 0.25; measured 0.73
    # measured: 0.45 robust, 0.0 plain
    assert _pgd_accuracy(robust, data, eps) > _pgd_accuracy(plain, data, eps) + 0.2


def test_config_hash_of_existing_configs_is_unchanged():
    """Options added later are left out of the checkpoint hash at their defaults, so runs
    checkpointed before they existed still resume."""
    from unbackdoor.train.loop import config_hash

    assert config_hash(TrainConfig()) == "d054a8ab4e9752de"  # as before adv_eps existed
    assert config_hash(TrainConfig(adv_eps=8.0)) != config_hash(TrainConfig())


def test_adversarial_options_are_checked():
    with pytest.raises(ConfigError, match="adv_step"):
        TrainConfig(adv_step=2.0).validate()  # a step without a radius
    with pytest.raises(ConfigError, match="adv_steps=0"):
        TrainConfig(adv_eps=8, adv_steps=0).validate()
    with pytest.raises(ConfigError, match="adv_eps=None"):
        TrainConfig(adv_eps=None).validate()
    with pytest.raises(ConfigError, match="custom loss_fn"):
        train(tiny_model(), blobs(n=64), TrainConfig(epochs=1, adv_eps=8), loss_fn=lambda m, b: 0)


def test_more_pgd_steps_find_a_stronger_perturbation():
    """The training loss is taken on perturbed inputs within the radius: higher than the clean
    loss, and higher with 5 PGD steps than with FGSM-RS's one."""
    import torch.nn.functional as F

    from unbackdoor.data.loader import iterate
    from unbackdoor.train.adversarial import adversarial_loss

    data = blobs(n=128)
    model = tiny_model()
    train(model, data, TrainConfig(epochs=3, batch_size=32, lr=0.05))
    model.eval()
    batch = next(iter(iterate(data, 128, shuffle=False)))
    clean = float(F.cross_entropy(model(batch.x), batch.y))
    torch.manual_seed(0)
    one = float(adversarial_loss(0.2, steps=1)(model, batch))
    torch.manual_seed(0)
    five = float(adversarial_loss(0.2, steps=5)(model, batch))
    assert clean < one < five


def test_toward_moves_parameters_for_the_block_and_puts_them_back_exactly():
    from unbackdoor.train.path_point import toward

    torch.manual_seed(0)
    model, anchor = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 5)
    with toward(model, anchor, 0.25):
        for p, a, b in zip(model.parameters(), anchor.parameters(), before, strict=True):
            assert torch.allclose(p, b + 0.25 * (a - b))
        model(x).pow(2).sum().backward()
        inside = model(x).detach()
    # the gradient is the one at the moved point, the weights are exactly the old ones
    moved = torch.nn.Linear(5, 3)
    with torch.no_grad():
        for m, a, b in zip(moved.parameters(), anchor.parameters(), before, strict=True):
            m.copy_(b + 0.25 * (a - b))
    moved(x).pow(2).sum().backward()
    assert torch.allclose(moved.weight.grad, model.weight.grad)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert not torch.allclose(model(x), inside)
    with toward(model, anchor, 0.0):  # off: nothing moves
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    with (
        pytest.raises(ValueError, match="no parameter 'weight'"),
        toward(model, torch.nn.Linear(5, 4), 0.5),
    ):
        pass
    with pytest.raises(ValueError, match="fraction"), toward(model, anchor, 1.0):
        pass
