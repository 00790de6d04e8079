"""Evaluation: one loop over a data set, the metrics of DESIGN.md section 4 (CA, ASR, RA, DER)."""

from unbackdoor.eval.loop import predict
from unbackdoor.eval.metrics import Metrics, defense_effectiveness_rate, evaluate

__all__ = ["predict", "Metrics", "evaluate", "defense_effectiveness_rate"]
