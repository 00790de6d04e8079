import pytest
import torch
from torch import nn

from unbackdoor.data import ImageDataset
from unbackdoor.eval import defense_effectiveness_rate, evaluate, predict


class CornerModel(nn.Module):
    """Predicts the label written in pixel (0, 0) unless pixel (0, 1) is lit: then class 0."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        label = (x[:, 0, 0, 0] * 255).round().long().clamp(0, self.classes - 1)
        label = torch.where(x[:, 0, 0, 1] > 0.5, torch.zeros_like(label), label)
        return nn.functional.one_hot(label, self.classes).float() + self.dummy


def corner_data(labels, predicted):
    n = len(labels)
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor(predicted, dtype=torch.uint8)
    return ImageDataset(x, torch.tensor(labels), ["a", "b", "c"], "corner")


def stamp(x, index):
    x = x.clone()
    x[:, 0, 0, 1] = 1.0
    return x


def test_clean_accuracy_asr_and_robust_accuracy_on_a_constructed_case():
    data = corner_data([0, 1, 2, 1, 2, 0], [0, 1, 0, 1, 2, 2])  # 4 of 6 right
    model = CornerModel(3)
    m = evaluate(model, data, trigger=stamp, attack_labels=lambda y: torch.zeros_like(y))
    assert m.clean_acc == pytest.approx(4 / 6)
    assert m.n_triggered == 4  # target-class samples are excluded from ASR
    assert m.asr == 1.0 and m.robust_acc == 0.0
    no_trigger = evaluate(model, data)
    assert no_trigger.asr is None and no_trigger.robust_acc is None


def test_all_to_all_labels_count_every_sample():
    data = corner_data([0, 1, 2], [0, 1, 2])
    m = evaluate(CornerModel(3), data, trigger=stamp, attack_labels=lambda y: (y + 1) % 3)
    assert m.n_triggered == 3
    assert m.asr == pytest.approx(1 / 3)  # only y=2 -> 0 is hit
    assert m.robust_acc == pytest.approx(1 / 3)  # only y=0 keeps its label


def test_predict_matches_batches():
    data = corner_data([0, 1, 2] * 5, [2, 1, 0] * 5)
    preds = predict(CornerModel(3), data, batch_size=4)
    assert preds.tolist() == [2, 1, 0] * 5


def test_der():
    assert defense_effectiveness_rate(1.0, 0.0, 0.9, 0.9) == 1.0
    assert defense_effectiveness_rate(0.9, 0.9, 0.9, 0.9) == 0.5
    assert defense_effectiveness_rate(0.9, 0.1, 0.9, 0.8) == pytest.approx(0.85)
    assert defense_effectiveness_rate(0.1, 0.5, 0.8, 0.9) == 0.5


def test_evaluate_rejects_class_count_mismatch():
    from unbackdoor.errors import DataError
    from unbackdoor.models import create_model

    model = create_model("small_cnn", 10, in_channels=1, input_size=(4, 4))
    with pytest.raises(DataError, match="3 classes but the model has 10"):
        evaluate(model, corner_data([0], [0]))


def test_channels_last_evaluation_matches_and_restores_the_layout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    data = ImageDataset(
        torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8), torch.arange(50) % 4, list("abcd")
    )
    nchw = predict(model, data, channels_last=False)
    nhwc = predict(model, data, channels_last=True)
    assert torch.equal(nchw, nhwc)
    assert model[0].weight.is_contiguous()  # the model's own layout is back
