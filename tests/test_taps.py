"""Layer taps (unbackdoor.models.taps): which layers are tapped, what is kept, the gap."""

import pytest
import torch
from torch import nn

from unbackdoor.models import create_model
from unbackdoor.models.taps import LayerTaps, feature_layer_names, relative_gap


def _model(name: str) -> nn.Module:
    if name == "small_cnn":
        return create_model(name, 10, in_channels=1, input_size=(28, 28))
    return create_model(name, 10)


def test_models_name_their_blocks_and_others_get_every_conv():
    assert feature_layer_names(_model("fastnet")) == ("group1", "group2", "group3")
    resnet = _model("narrow_resnet")
    assert feature_layer_names(resnet) == tuple(f"layers.{i}" for i in range(4))
    cnn = _model("small_cnn")
    assert feature_layer_names(cnn) == ("features.0", "features.4")
    assert feature_layer_names(cnn, ["features.2"]) == ("features.2",)


def test_bad_layer_names_are_refused_with_the_name():
    cnn = _model("small_cnn")
    with pytest.raises(ValueError, match=r"no layer named \['group9'\]"):
        feature_layer_names(cnn, ["group9"])
    with pytest.raises(ValueError, match="feature_layers is empty"):
        feature_layer_names(cnn, [])
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        feature_layer_names(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_taps_keep_the_latest_outputs_and_go_away():
    torch.manual_seed(0)
    cnn = _model("small_cnn").eval()
    x = torch.rand(3, 1, 28, 28)
    with LayerTaps(cnn) as taps:
        cnn(x)
        first = [v.clone() for v in taps.values]
        assert [tuple(v.shape) for v in first] == [(3, 32, 28, 28), (3, 64, 14, 14)]
        expected = cnn.features[0](cnn.normalize(x))
        assert torch.allclose(first[0], expected)
        cnn(x[:1])
        assert taps.values[0].shape[0] == 1  # the latest forward's
    assert not cnn.features[0]._forward_hooks


def test_relative_gap():
    a = torch.ones(2, 3, 4, 4)
    assert relative_gap(a, a).item() == 0.0
    assert relative_gap(2 * a, a).item() == pytest.approx(1.0)
    # per row, then averaged: rows of different size weigh the same
    b = torch.stack([torch.ones(3, 4, 4), 10 * torch.ones(3, 4, 4)])
    assert relative_gap(b * 1.5, b).item() == pytest.approx(0.25)
