"""Analyses of a model's weight space (``unbackdoor analyze ...``)."""

from unbackdoor.analyze.disentanglement import (
    DisentanglementResult,
    disentanglement_artifact,
    weight_disentanglement_error,
)

__all__ = ["DisentanglementResult", "disentanglement_artifact", "weight_disentanglement_error"]
