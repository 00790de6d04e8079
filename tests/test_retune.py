"""The re-tuning attack: brings a backdoor back into a backdoored model, barely into a clean one."""

import unbackdoor
from unbackdoor.attacks import load_attack
from unbackdoor.eval.retune import RetuneConfig, retune_attack


def test_retune_attack_on_backdoored_and_clean_models(mnist_backdoor, mnist_clean):
    record = load_attack(mnist_backdoor)
    pool = unbackdoor.load_dataset("mnist", "train")
    test = unbackdoor.load_dataset("mnist", "test").sample(2000, 0)
    cfg = RetuneConfig(samples=1000, eval_every=4)
    backdoored, _ = unbackdoor.load_model(mnist_backdoor)
    clean, _ = unbackdoor.load_model(mnist_clean)
    on_backdoored = retune_attack(backdoored, pool, test, record, cfg)
    on_clean = retune_attack(clean, pool, test, record, cfg)
    # the caller's own measurement of the starting point is taken as it is, nothing else moves
    given = retune_attack(clean, pool, test, record, cfg, before=on_clean.before)
    assert given.before is on_clean.before and given.curve == on_clean.curve
    assert on_backdoored.after.asr > 0.9
    assert on_clean.before.asr < 0.05 and on_clean.after.asr < 0.3
    assert on_clean.config["poisoned"] == 10
    steps = [p["step"] for p in on_clean.curve]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 3


def test_retune_brings_a_hidden_backdoor_back(mnist_backdoor):
    """A backdoor only suppressed (one epoch on stamped images with their true labels: ASR
    near 0) comes back under the attack, far above what the clean model reaches (< 0.3
    above): the superficial removal the attack exists to expose."""
    import copy

    import torch

    from unbackdoor.data import ImageDataset
    from unbackdoor.train import TrainConfig, train

    record = load_attack(mnist_backdoor)
    model, _ = unbackdoor.load_model(mnist_backdoor)
    pool = unbackdoor.load_dataset("mnist", "train")
    test = unbackdoor.load_dataset("mnist", "test").sample(2000, 0)
    sub = pool.sample(500, 11)
    with torch.no_grad():
        stamped = record.trigger(sub.float_images(), torch.arange(len(sub)))
    images = (stamped.clamp(0, 1) * 255).round().to(torch.uint8)
    suppress = ImageDataset(images, sub.labels, list(sub.class_names), "stamped, true labels")
    hidden = copy.deepcopy(model)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.01, schedule="cosine", warmup=0.0, seed=0)
    train(hidden, suppress, cfg)
    hidden.eval()
    result = retune_attack(hidden, pool, test, record, RetuneConfig(samples=1000, eval_every=4))
    assert result.before.asr < 0.05
    assert result.after.asr > 0.6, result.curve
