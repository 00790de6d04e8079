"""Bad settings are refused up front by name; helpers leave the caller's model and files as a
user expects (issue 4's validation, issue 8's re-tuning options, the ground rules on outputs)."""

import json

import pytest
import torch
from torch import nn

import unbackdoor
from unbackdoor.attacks.registry import create_attack
from unbackdoor.cli import main
from unbackdoor.defenses.registry import create_defense
from unbackdoor.errors import ConfigError
from unbackdoor.eval.retune import RetuneConfig
from unbackdoor.inversion import InversionConfig, invert
from unbackdoor.unlearn import defender_data
from unbackdoor.utils.io import atomic_write_text


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"rounds": 2.5}, "rounds=2.5"),
        ({"target": "zero"}, "target='zero'"),
        ({"inversion_steps": True}, "inversion_steps=True"),
        ({"target": -3}, "target=-3"),
        ({"target": 3, "mode": "untargeted"}, "target=3"),
    ],
)
def test_bibau_refuses_a_bad_value_by_name(options, named):
    with pytest.raises(ConfigError, match=f"bibau.*{named.replace('(', '.')}"):
        create_defense("bibau", **options)


def test_an_int_passes_for_a_float_and_attacks_are_checked_too():
    assert create_defense("bibau", lr=1).lr == 1
    assert create_defense("ft", device=torch.device("cpu")).device == torch.device("cpu")
    assert RetuneConfig(device=torch.device("cpu")).validate().device == torch.device("cpu")
    with pytest.raises(ConfigError, match="size=2.5"):
        create_attack("badnets", size=2.5)


def test_a_target_outside_the_classes_fails_before_any_inversion():
    import synth

    data = synth.blobs(n=40, classes=4, size=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.raises(ConfigError, match="target=7 but synth has 4 classes"):
        create_defense("bibau", target=7).run(model, data, data)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"eval_every": 0}, "eval_every=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"optimizer": "adamm"}, "optimizer='adamm'"),
        ({"samples": 10.5}, "samples=10.5"),
    ],
)
def test_retune_config_refuses_a_bad_value_by_name(options, named):
    with pytest.raises(ConfigError, match=f"RetuneConfig: {named}"):
        RetuneConfig(**options).validate()


def test_retune_runs_where_it_is_told():
    assert RetuneConfig(device="cpu").train_config().device == "cpu"


def test_a_device_name_torch_does_not_know_is_refused_up_front():
    from unbackdoor.train import TrainConfig
    from unbackdoor.utils.runinfo import resolve_device

    with pytest.raises(ConfigError, match="defense 'ft': device='gpu0' is not a device"):
        create_defense("ft", device="gpu0")
    with pytest.raises(ConfigError, match="RetuneConfig: device=5 is invalid"):
        RetuneConfig(device=5).validate()
    with pytest.raises(ConfigError, match="TrainConfig: device='cuda:x'"):
        TrainConfig(device="cuda:x").validate()
    # a config may name CUDA on a machine without it (a grid prepared for a GPU node), but
    # running there says so by name rather than failing inside a tensor move
    create_defense("ft", device="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda' was asked for, but CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_inversion_leaves_frozen_and_trainable_parameters_as_they_were():
    import synth

    data = synth.blobs(n=64, classes=4, size=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    model[1].bias.requires_grad_(False)  # frozen by its owner (a pretrained trunk, say)
    model.train()
    invert(model, data, InversionConfig(steps=3, batch_size=32), classes=[0, 1])
    assert model[1].bias.requires_grad is False and model[1].weight.requires_grad is True
    assert model.training and model[3].training


def test_inversion_restores_the_model_when_it_fails():
    import synth

    data = synth.blobs(n=64, classes=4, size=8)

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        invert(model, data, InversionConfig(steps=3, batch_size=32), classes=[0])
    assert model.training and model.lin.weight.requires_grad


def test_atomic_outputs_get_the_usual_permissions(tmp_path, monkeypatch):
    from unbackdoor.utils import io

    monkeypatch.setattr(io, "_UMASK", 0o022)  # the process's umask, read at import
    path = atomic_write_text(tmp_path / "out.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_a_named_data_set_gives_the_default_share_a_folder_all(mnist_backdoor, tmp_path):
    from PIL import Image

    _, manifest = unbackdoor.load_model(mnist_backdoor)
    assert len(defender_data(manifest, "mnist", None, 0.05, 0)) == 3000
    assert len(defender_data(manifest, None, None, 0.05, 0)) == 3000
    assert len(defender_data(manifest, "mnist", 200, 0.05, 0)) == 200
    for c in manifest.class_names:  # a user's folder: <class>/<image>, 3 images a class
        (tmp_path / "mine" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (28, 28), 40 * i).save(tmp_path / "mine" / c / f"{i}.png")
    assert len(defender_data(manifest, str(tmp_path / "mine"), None, 0.05, 0)) == 30


def test_evaluate_refuses_retune_on_another_split(mnist_backdoor, capsys):
    code = main(["evaluate", str(mnist_backdoor), "--retune", "--split", "train"])
    assert code == 2 and "test split" in capsys.readouterr().err


def test_evaluate_measures_a_clean_model_with_another_models_trigger(
    mnist_backdoor, mnist_clean, capsys
):
    """The floor from the CLI: a never-backdoored model, the attack's trigger, re-tuned."""
    args = ["evaluate", str(mnist_clean), "--attack-from", str(mnist_backdoor), "--json"]
    assert main([*args, "--retune", "--retune-samples", "200"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["asr"] < 0.2 and r["retune_asr"] is not None  # the clean model ignores the stamp
    assert main(["evaluate", str(mnist_clean), "--retune"]) != 0
    assert "no attack.json" in capsys.readouterr().err


def test_attack_from_a_model_of_other_inputs_is_refused(mnist_backdoor, tmp_path):
    from unbackdoor.api import evaluate_artifact
    from unbackdoor.models.artifact import MANIFEST

    other = tmp_path / "other"
    other.mkdir()
    manifest = json.loads((mnist_backdoor / MANIFEST).read_text())
    manifest["class_names"] = [f"k{i}" for i in range(10)]
    (other / MANIFEST).write_text(json.dumps(manifest))
    for f in mnist_backdoor.iterdir():
        if f.is_file() and f.name != MANIFEST:
            (other / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ConfigError, match="classes"):
        evaluate_artifact(mnist_backdoor, attack_from=other)
