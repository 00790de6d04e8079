"""Data sets held in memory as uint8 tensors, their readers, batching and tensor augmentation."""

from unbackdoor.data.dataset import ImageDataset, stratified_indices
from unbackdoor.data.loader import Batch, iterate
from unbackdoor.data.transforms import Augment, default_augment

__all__ = ["ImageDataset", "stratified_indices", "Batch", "iterate", "Augment", "default_augment"]
