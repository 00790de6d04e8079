"""Attack interface, label policies, poisoning and the attack pipeline (issue 3)."""

import json

import pytest
import torch

from synth import blobs
from unbackdoor.attacks import (
    LabelPolicy,
    create_attack,
    list_attacks,
    load_attack,
    poison_dataset,
)
from unbackdoor.attacks.registry import ATTACKS
from unbackdoor.errors import ConfigError, RegistryError

# attacks whose trigger must be learned first are covered in test_attacks_learned.py
LEARNED = {"input_aware", "label_consistent", "trojannn"}
SIMPLE = [n for n in list_attacks() if n not in LEARNED and not ATTACKS.get(n).needs_model]


@pytest.mark.parametrize("name", SIMPLE)
def test_every_simple_trigger_keeps_shape_and_range_and_changes_images(name):
    attack = create_attack(name, seed=3)
    for shape in [(4, 3, 32, 32), (4, 1, 28, 28)]:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
        idx = torch.arange(shape[0])
        out = attack.apply(x, idx)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert (out - x).abs().mean() > 0
        assert torch.equal(out, create_attack(name, seed=3).apply(x, idx))  # determinism


def test_policies():
    y = torch.tensor([0, 1, 2, 3])
    a2o = LabelPolicy("all_to_one", 2, 4)
    assert a2o.attack_labels(y).tolist() == [2, 2, 2, 2]
    assert a2o.eligible(y).tolist() == [True, True, False, True]
    a2a = LabelPolicy("all_to_all", 0, 4)
    assert a2a.attack_labels(y).tolist() == [1, 2, 3, 0]
    cl = LabelPolicy("clean_label", 1, 4)
    assert cl.eligible(y).tolist() == [False, True, False, False]
    assert cl.poisoned_labels(y).tolist() == y.tolist()
    with pytest.raises(ConfigError, match="target=7 is not a class"):
        LabelPolicy("all_to_one", 7, 4)
    with pytest.raises(ConfigError, match="unknown"):
        LabelPolicy("some_to_some", 0, 4)


@pytest.mark.parametrize(
    "kind,rate", [("all_to_one", 0.1), ("all_to_all", 0.25), ("clean_label", 0.2)]
)
def test_poisoning_takes_exactly_the_rate_and_relabels_by_policy(kind, rate):
    data = blobs(n=400, classes=4, channels=3, size=16)
    policy = LabelPolicy(kind, 1, 4)
    p = poison_dataset(data, create_attack("badnets"), policy, rate, seed=0)
    idx = p.poison_indices
    assert idx.numel() == round(rate * len(data))
    orig = p.original_labels[idx]
    if kind == "all_to_one":
        assert (orig != 1).all() and (p.data.labels[idx] == 1).all()
    elif kind == "all_to_all":
        assert torch.equal(p.data.labels[idx], (orig + 1) % 4)
    else:
        assert (orig == 1).all() and torch.equal(p.data.labels[idx], orig)
    clean = ~p.is_poisoned
    assert torch.equal(p.data.images[clean], data.images[clean])
    assert not torch.equal(p.data.images[idx], data.images[idx])
    x, y, i, is_p, oy = p[int(idx[0])]
    assert is_p and i == int(idx[0]) and x.shape == (3, 16, 16) and oy == int(orig[0])
    again = poison_dataset(data, create_attack("badnets"), policy, rate, seed=0)
    assert torch.equal(again.poison_indices, idx)


def test_cover_samples_keep_their_labels():
    data = blobs(n=200, classes=4, channels=3, size=16)
    p = poison_dataset(
        data, create_attack("badnets"), LabelPolicy("all_to_one", 0, 4), 0.1, cover_rate=0.05
    )
    cover = p.is_cover
    assert int(cover.sum()) == 10 and not (cover & p.is_poisoned).any()
    assert torch.equal(p.data.labels[cover], data.labels[cover])


def test_rate_beyond_eligible_is_refused():
    data = blobs(n=100, classes=4)
    with pytest.raises(ConfigError, match="only 25 are eligible"):
        poison_dataset(data, create_attack("badnets"), LabelPolicy("clean_label", 0, 4), 0.5)


def test_unknown_attack_and_keys():
    with pytest.raises(RegistryError, match="unknown attack 'badnet'.*badnets"):
        create_attack("badnet")
    with pytest.raises(ConfigError, match="unknown key 'sise'.*'size'"):
        create_attack("badnets", sise=4)
    with pytest.raises(ConfigError, match="size=0"):
        create_attack("badnets", size=0)


def test_badnets_random_location_is_per_sample_and_deterministic():
    a = create_attack("badnets", random_location=True, seed=1)
    x = torch.zeros(6, 1, 16, 16)
    out = a.apply(x, torch.arange(6))
    where = [tuple(torch.nonzero(o[0]).min(0).values.tolist()) for o in out]
    assert len(set(where)) > 1
    assert torch.equal(out, a.apply(x, torch.arange(6)))


def test_badnets_mnist_end_to_end_reaches_high_asr_in_seconds(tmp_path):
    from unbackdoor.attacks.pipeline import attack_model

    trained, record = attack_model(
        "mnist",
        "small_cnn",
        "badnets",
        rate=0.1,
        epochs=1,
        train_samples=3000,
        batch_size=64,
        out=tmp_path / "bd",
        seed=0,
    )
    assert trained.metrics.asr > 0.9 and trained.metrics.clean_acc > 0.85
    saved = json.loads((tmp_path / "bd" / "attack.json").read_text())
    assert saved["attack"]["name"] == "badnets" and saved["num_poisoned"] == 300
    assert len(saved["poison_indices"]) == 300
    assert (tmp_path / "bd" / "trigger.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "bd" / "metrics.json").read_text())
    assert set(metrics) >= {"clean_acc", "asr", "robust_acc"}
    rebuilt = load_attack(tmp_path / "bd")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(rebuilt.trigger(x), record.trigger(x))
    import unbackdoor

    again = unbackdoor.evaluate_artifact(tmp_path / "bd")
    assert again.asr == pytest.approx(trained.metrics.asr)


def test_zoo_reuses_a_cached_model(tmp_path):
    from unbackdoor.attacks.zoo import get_or_create, list_zoo, prune_zoo, zoo_key

    calls = []

    def make(path):
        calls.append(path)
        from unbackdoor.models import create_model, save_model

        save_model(
            create_model("small_cnn", 4, in_channels=1, input_size=(16, 16)),
            path,
            class_names=list("abcd"),
        )

    cfg = {"dataset": "synth", "attack": "badnets", "seed": 1}
    p1 = get_or_create(cfg, make, root=tmp_path)
    p2 = get_or_create(dict(reversed(list(cfg.items()))), make, root=tmp_path)
    assert p1 == p2 and len(calls) == 1 and p1.name == zoo_key(cfg)
    assert zoo_key({**cfg, "seed": 2}) != zoo_key(cfg)
    assert [e.key for e in list_zoo(tmp_path)] == [p1.name]
    assert prune_zoo(keys=[p1.name], root=tmp_path) == [p1.name]
    assert list_zoo(tmp_path) == []


def test_two_workers_asking_for_one_zoo_model_train_it_once(tmp_path):
    """The second asker waits on the entry's lock and takes the first one's model (the grid
    queues cells behind the models they need on this)."""
    import threading
    import time

    from unbackdoor.attacks.zoo import LOCKS, get_or_create, prune_zoo

    calls, started = [], threading.Event()

    def make(path):
        calls.append(path)
        started.set()
        time.sleep(0.5)  # the other asker arrives while this one trains
        from unbackdoor.models import create_model, save_model

        net = create_model("small_cnn", 4, in_channels=1, input_size=(16, 16))
        save_model(net, path, class_names=list("abcd"))

    cfg = {"dataset": "synth", "attack": "badnets", "seed": 3}
    got = []
    first = threading.Thread(target=lambda: got.append(get_or_create(cfg, make, root=tmp_path)))
    first.start()
    assert started.wait(10)
    got.append(get_or_create(cfg, make, root=tmp_path))  # blocks until the first is done
    first.join()
    assert len(calls) == 1 and got[0] == got[1] and (got[0] / "zoo.json").is_file()
    assert (tmp_path / LOCKS).is_dir()
    assert prune_zoo(unfinished=True, root=tmp_path) == [] and (tmp_path / LOCKS).is_dir()
