import json
import os
import pickle

import pytest
import torch

from unbackdoor.errors import ArtifactError, UnsafeFileError
from unbackdoor.models import create_model, load_model, load_weights_file, save_model
from unbackdoor.models.artifact import load_state_checked, weights_digest

NAMES = [str(i) for i in range(10)]


def small():
    return create_model("small_cnn", 10, in_channels=1, input_size=(28, 28))


def test_roundtrip_preserves_outputs_and_manifest(tmp_path):
    m = small().eval()
    save_model(m, tmp_path / "a", class_names=NAMES, dataset="mnist", seed=3)
    m2, manifest = load_model(tmp_path / "a")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    w = m2.features[4].weight  # written contiguous, loaded back into the NHWC layout
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert manifest.seed == 3 and manifest.dataset == "mnist"
    data = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert data["num_classes"] == 10 and data["class_names"] == NAMES
    assert data["input_size"] == [1, 28, 28]
    assert "torch" in data["versions"]
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_weights_digest_tells_trainings_apart(tmp_path):
    torch.manual_seed(0)
    save_model(small(), tmp_path / "a", class_names=NAMES)
    save_model(small(), tmp_path / "b", class_names=NAMES)  # other initial weights
    da = weights_digest(tmp_path / "a")
    assert len(da) == 16 and da == weights_digest(tmp_path / "a")
    assert da != weights_digest(tmp_path / "b")
    with pytest.raises(ArtifactError, match="model.safetensors"):
        weights_digest(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": evil}, f)
    with pytest.raises(UnsafeFileError, match="refused to load"):
        load_weights_file(path)
    assert not marker.exists()


def test_pt_state_dict_loads_with_weights_only(tmp_path):
    m = small()
    torch.save(m.state_dict(), tmp_path / "w.pth")
    state = load_weights_file(tmp_path / "w.pth")
    load_state_checked(small(), state, "w.pth")


def test_truncated_safetensors_is_named(tmp_path):
    save_model(small(), tmp_path / "a", class_names=NAMES)
    w = tmp_path / "a" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        load_model(tmp_path / "a")


def test_nan_weights_are_refused(tmp_path):
    m = small()
    save_model(m, tmp_path / "a", class_names=NAMES)
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "a" / "model.safetensors"))
    state["head.3.bias"][0] = float("nan")
    save_file(state, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"non-finite.*head\.3\.bias"):
        load_model(tmp_path / "a")
    with pytest.raises(ArtifactError, match="non-finite"):
        with torch.no_grad():
            m.head[3].bias[0] = float("inf")
        save_model(m, tmp_path / "b", class_names=NAMES)


def test_class_count_mismatch_is_named(tmp_path):
    save_model(small(), tmp_path / "a", class_names=NAMES)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["architecture"]["num_classes"] = 5
    manifest["num_classes"] = 5
    manifest["class_names"] = NAMES[:5]
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"head\.3\.weight.*\(5, 128\).*class count"):
        load_model(tmp_path / "a")


def test_manifest_inconsistencies(tmp_path):
    save_model(small(), tmp_path / "a", class_names=NAMES)
    path = tmp_path / "a" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["class_names"] = NAMES[:3]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="3 class names for a model with 10 classes"):
        load_model(tmp_path / "a")
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_model(tmp_path / "a")
    with pytest.raises(ArtifactError, match="no such model directory"):
        load_model(tmp_path / "missing")


def test_other_architecture_weights_are_refused(tmp_path):
    save_model(small(), tmp_path / "a", class_names=NAMES)
    other = create_model("narrow_resnet", 10, in_channels=1, input_size=(28, 28))
    state = load_weights_file(tmp_path / "a" / "model.safetensors")
    with pytest.raises(ArtifactError, match="missing .*unexpected"):
        load_state_checked(other, state, "a")


def test_save_refuses_wrong_class_names(tmp_path):
    with pytest.raises(ArtifactError, match="3 class names"):
        save_model(small(), tmp_path / "a", class_names=["a", "b", "c"])
    assert not (tmp_path / "a" / "manifest.json").exists()
