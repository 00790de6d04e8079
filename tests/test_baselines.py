"""Baselines on the small MNIST BadNets model (issue 6)."""

import unbackdoor

FAST_NC = dict(inversion_steps=100, epochs=2)


def test_nc_flags_the_planted_target_and_lowers_asr(mnist_backdoor):
    model, _ = unbackdoor.load_model(mnist_backdoor)
    data = unbackdoor.load_dataset("mnist", "train").sample(600, 2)
    purified, report = unbackdoor.unlearn(model, data, "nc", **FAST_NC)
    assert report.backdoor_found and report.suspected_target == 0
    assert report.anomaly_score > 2
    from unbackdoor.attacks import load_attack

    rec = load_attack(mnist_backdoor)
    test = unbackdoor.load_dataset("mnist", "test").sample(2000, 0)
    after = unbackdoor.evaluate(
        purified, test, trigger=rec.trigger, attack_labels=rec.attack_labels
    )
    assert after.asr < 0.3


def test_nc_does_not_flag_a_clean_model(mnist_clean):
    model, _ = unbackdoor.load_model(mnist_clean)
    data = unbackdoor.load_dataset("mnist", "train").sample(600, 2)
    _, report = unbackdoor.unlearn(model, data, "nc", **FAST_NC)
    assert report.backdoor_found is False
