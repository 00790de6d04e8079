"""Data sets held in memory as uint8 tensors, their readers, batching and tensor augmentation."""

from unbackdoor.data.dataset import ImageDataset, stratified_indices
from unbackdoor.data.loader import Batch, iterate
from unbackdoor.data.registry import list_datasets, load_dataset, register_dataset
from unbackdoor.data.transforms import Augment, default_augment

# Imported for their @register_dataset side effect.
from unbackdoor.data import cifar10, mnist  # noqa: E402,F401  isort: skip

__all__ = [
    "ImageDataset",
    "stratified_indices",
    "Batch",
    "iterate",
    "Augment",
    "default_augment",
    "load_dataset",
    "list_datasets",
    "register_dataset",
]
