import pytest
import torch

from unbackdoor.errors import ConfigError, RegistryError
from unbackdoor.models import create_model, list_models


def test_registry_lists_required_models():
    assert {"fastnet", "small_cnn", "preact_resnet18", "narrow_resnet"} <= set(list_models())


@pytest.mark.parametrize("name", ["fastnet", "small_cnn", "preact_resnet18", "narrow_resnet"])
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_models_map_unit_images_to_logits(name, channels, size):
    model = create_model(name, 7, in_channels=channels, input_size=(size, size)).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert model.spec.num_classes == 7


@pytest.mark.parametrize("name", ["fastnet", "small_cnn", "preact_resnet18", "narrow_resnet"])
def test_models_keep_their_weights_channels_last_with_the_same_outputs(name):
    """NHWC weights (the faster layout on CPU, benchmarks/foundation/channels_last.md) give the
    outputs NCHW weights give, to float rounding."""
    model = create_model(name, 10, in_channels=3, input_size=(32, 32)).eval()
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        nhwc = model(x)
        nchw = model.to(memory_format=torch.contiguous_format)(x)
    assert torch.allclose(nhwc, nchw, atol=1e-5)


def test_normalisation_is_the_first_layer():
    model = create_model("small_cnn", 3, in_channels=1, input_size=(28, 28), mean=[0.3], std=[0.2])
    first = next(iter(model.children()))
    assert type(first).__name__ == "Normalize"
    x = torch.full((1, 1, 2, 2), 0.5)
    assert torch.allclose(first(x), torch.full_like(x, 1.0))


def test_unknown_model_names_known_ones():
    with pytest.raises(RegistryError, match="unknown model 'resnet99'.*preact_resnet18"):
        create_model("resnet99", 10)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("small_cnn", 1)
    with pytest.raises(ConfigError, match="bad arguments"):
        create_model("small_cnn", 10, not_an_arg=3)
    with pytest.raises(ConfigError, match="mean/std"):
        create_model("small_cnn", 10, in_channels=3, mean=[0.5])
