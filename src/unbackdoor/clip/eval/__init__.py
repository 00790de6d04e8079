"""Zero-shot metrics and retrieval recall for CLIP models."""

from unbackdoor.clip.eval.metrics import (
    Retrieval,
    image_embeddings,
    retrieval_recall,
    zero_shot_metrics,
)

__all__ = ["Retrieval", "image_embeddings", "retrieval_recall", "zero_shot_metrics"]
