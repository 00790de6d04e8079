"""The one training loop, its config, optimizers/schedules and DDP support."""

from unbackdoor.train.config import TrainConfig
from unbackdoor.train.loop import LossFn, TrainResult, cross_entropy_loss, train

__all__ = ["TrainConfig", "TrainResult", "LossFn", "cross_entropy_loss", "train"]
