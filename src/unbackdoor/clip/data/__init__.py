"""Image-caption pairs and their poisoning."""

from unbackdoor.clip.data.pairs import CaptionedDataset, caption_pairs
from unbackdoor.clip.data.poison import PoisonedPairs, poison_pairs

__all__ = ["CaptionedDataset", "caption_pairs", "PoisonedPairs", "poison_pairs"]
