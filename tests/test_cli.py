import json
import subprocess
import sys

import pytest

from unbackdoor.cli import main


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_models_and_datasets(capsys):
    code, out, _ = run_cli(["list", "models"], capsys)
    assert code == 0 and "preact_resnet18" in out and "fastnet" in out
    code, out, _ = run_cli(["list", "datasets", "--json"], capsys)
    assert code == 0 and {"mnist", "cifar10"} <= set(json.loads(out))


def test_help_has_examples(capsys):
    for cmd in (["train", "--help"], ["evaluate", "--help"], ["demo", "--help"]):
        code, out, _ = run_cli(cmd, capsys)
        assert code == 0 and "Example" in out


def test_train_then_evaluate_json(tmp_path, capsys):
    out_dir = tmp_path / "m"
    code, out, _ = run_cli(
        [
            "train",
            "--dataset",
            "mnist",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--train-samples",
            "2000",
            "--out",
            str(out_dir),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["clean_acc"] > 0.8 and summary["seed"] == 0
    assert {"model.safetensors", "manifest.json", "metrics.json", "train.json"} <= {
        p.name for p in out_dir.iterdir()
    }
    assert not (out_dir / ".checkpoint").exists()
    train_record = json.loads((out_dir / "train.json").read_text())
    assert train_record["seed"] == 0 and "torch" in train_record["versions"]
    code, out, err = run_cli(["evaluate", str(out_dir), "--json"], capsys)
    assert code == 0
    metrics = json.loads(out)  # exactly one JSON object on stdout
    assert metrics["clean_acc"] == pytest.approx(summary["clean_acc"])
    assert set(metrics) >= {"clean_acc", "asr", "robust_acc"}
    # a finished model is not overwritten without --force
    code, _, err = run_cli(
        ["train", "--dataset", "mnist", "--epochs", "1", "--out", str(out_dir)], capsys
    )
    assert code == 2 and "already holds a finished model" in err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--dataset", "nosuchset", "--out", "X"], "nosuchset"),
        (
            ["train", "--model", "resnet99", "--out", "X", "--epochs", "0"],
            "unknown model 'resnet99'",
        ),
        (["train", "--epochs", "-1", "--out", "X"], "--epochs"),
        (["evaluate", "does/not/exist"], "no such model directory"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code != 0
    assert needle in err
    assert "Traceback" not in err


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "unbackdoor", "--debug", "evaluate", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_attack_then_evaluate_and_zoo(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNBACKDOOR_ZOO", str(tmp_path / "zoo"))
    out_dir = tmp_path / "bd"
    code, out, _ = run_cli(
        [
            "attack",
            "--dataset",
            "mnist",
            "--attack",
            "badnets",
            "--epochs",
            "1",
            "--train-samples",
            "2000",
            "--poison-rate",
            "0.1",
            "--out",
            str(out_dir),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["poisoned"] == 200 and summary["asr"] > 0.5
    code, out, _ = run_cli(["evaluate", str(out_dir), "--json"], capsys)
    assert json.loads(out)["asr"] == pytest.approx(summary["asr"])
    code, out, _ = run_cli(["list", "attacks"], capsys)
    assert "badnets" in out
    code, out, _ = run_cli(["zoo", "show"], capsys)
    assert code == 0 and "0 models" in out
    code, _, err = run_cli(
        [
            "attack",
            "--attack",
            "badnets",
            "--option",
            "sise=3",
            "--out",
            str(tmp_path / "x"),
            "--epochs",
            "0",
        ],
        capsys,
    )
    assert code == 2 and "unknown key 'sise'" in err


def _image_folder(root, data):
    """``data`` written as the ``<class>/<image>.png`` folder a defender brings."""
    from PIL import Image

    for i, (img, y) in enumerate(zip(data.images, data.labels, strict=True)):
        d = root / data.class_names[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(d / f"{i:04d}.png")
    return root


def test_unlearn_bibau_from_the_command_line_with_an_image_folder(mnist_backdoor, tmp_path, capsys):
    """Issue 4's command: BI-BAU on the user's own folder of clean images."""
    import unbackdoor

    train = unbackdoor.load_dataset("mnist", "train").sample(300, 5)
    folder = _image_folder(tmp_path / "mine", train)
    fast = ["inversion_steps=100", "inner_steps=10", "outer_steps=30", "rounds=2"]
    args = ["unlearn", str(mnist_backdoor), "--method", "bibau", "--clean-data", str(folder)]
    args += [x for kv in fast for x in ("--option", kv)]
    code, out, err = run_cli([*args, "--out", str(tmp_path / "bibau"), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["method"] == "bibau" and summary["clean_samples_used"] == 300
    report = json.loads((tmp_path / "bibau" / "report.json").read_text())
    assert report["backdoor_found"] and report["suspected_target"] == 0
    assert (tmp_path / "bibau" / "inverted_trigger.png").is_file()
    # a folder with other classes than the model's is refused before any work, by name
    (folder / "horse").mkdir()
    moved = next((folder / train.class_names[0]).iterdir())
    moved.rename(folder / "horse" / moved.name)
    code, _, err = run_cli([*args, "--out", str(tmp_path / "no")], capsys)
    assert code == 2 and "horse" in err and not (tmp_path / "no").exists()


def test_unlearn_command_writes_purified_model_and_report(mnist_backdoor, tmp_path, capsys):
    out_dir = tmp_path / "ft"
    code, out, _ = run_cli(
        [
            "unlearn",
            str(mnist_backdoor),
            "--method",
            "ft",
            "--clean-samples",
            "300",
            "--option",
            "epochs=1",
            "--out",
            str(out_dir),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["method"] == "ft" and summary["clean_samples_used"] == 300
    assert (out_dir / "report.json").is_file() and (out_dir / "attack.json").is_file()
    code, out, _ = run_cli(["list", "defenses"], capsys)
    assert {"bibau", "tbar", "ft", "nc"} <= {line.split()[0] for line in out.splitlines()}


@pytest.mark.slow  # the README's main job end to end: 2-5 min on this project's 2-core CPU
def test_demo_runs_the_main_job_end_to_end(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0, err
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines() if "%" in line}
    before, after = (float(v.rstrip("%")) for v in rows["attack success rate"])
    assert before > 90 and after < 5, out
    ca_before, ca_after = (float(v.rstrip("%")) for v in rows["clean accuracy"])
    assert ca_after > ca_before - 1.5, out
    assert float(rows["ASR after re-tuning"][1].rstrip("%")) < 10, out
    assert "backdoor found: yes; suspected target: 0" in out
    assert (tmp_path / "demo" / "purified" / "inverted_trigger.png").is_file()


def test_unlearn_prints_the_notes_a_method_leaves(mnist_backdoor, tmp_path, capsys, monkeypatch):
    """A defense's ``diagnostics["notes"]`` (e.g. BI-BAU's held-out guard) reach the terminal."""
    import importlib

    unlearn_mod = importlib.import_module("unbackdoor.unlearn")  # the package's name is a function

    note = "round 1: the held-out guard halved the learning rate 2 time(s), to 0.00175"

    def fake(*_a, **_k):
        report = unlearn_mod.UnlearnReport(
            "bibau", {}, 300, 60, 1.0, None, False, diagnostics={"notes": [note]}
        )
        return None, report

    monkeypatch.setattr(unlearn_mod, "unlearn_artifact", fake)
    args = ["unlearn", str(mnist_backdoor), "--method", "bibau", "--out", str(tmp_path / "o")]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert f"note: {note}" in out
