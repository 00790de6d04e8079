"""unbackdoor: remove backdoors from trained neural networks.

    clean, report = unbackdoor.unlearn(model, clean_data, method="bibau")

The Python API mirrors the command line::

    import unbackdoor
    trained = unbackdoor.train_model("mnist", epochs=1, out="runs/mnist")
    print(unbackdoor.evaluate_artifact("runs/mnist"))
"""

from unbackdoor.api import TrainedModel, evaluate_artifact, train_model
from unbackdoor.data import ImageDataset
from unbackdoor.data.registry import list_datasets, load_dataset
from unbackdoor.eval import Metrics, defense_effectiveness_rate, evaluate, predict
from unbackdoor.models import create_model, list_models, load_model, save_model
from unbackdoor.train import TrainConfig, train
from unbackdoor.unlearn import UnlearnReport, unlearn, unlearn_artifact

__version__ = "0.1.0"

__all__ = [
    "ImageDataset",
    "Metrics",
    "TrainConfig",
    "TrainedModel",
    "create_model",
    "list_models",
    "load_model",
    "save_model",
    "list_datasets",
    "load_dataset",
    "train",
    "train_model",
    "evaluate",
    "evaluate_artifact",
    "predict",
    "defense_effectiveness_rate",
    "unlearn",
    "unlearn_artifact",
    "UnlearnReport",
    "__version__",
]
