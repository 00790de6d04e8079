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
    assert on_backdoored.after.asr > 0.9
    assert on_clean.before.asr < 0.05 and on_clean.after.asr < 0.3
    assert on_clean.config["poisoned"] == 10
    steps = [p["step"] for p in on_clean.curve]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 3
