"""Loss terms shared by defenses that train through the one training loop.

The consistency (distillation) term keeps a model's outputs close to a reference model's on the
same inputs: BI-BAU uses it to keep the backdoored model's clean behaviour while unlearning
(DESIGN.md section 4, after the knowledge-distillation loss of Hinton et al., 2015), and TBAR's
repair can use it to give back the accuracy negation took.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.data.loader import Batch
from unbackdoor.train.loop import LossFn


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per sample, averaged over the batch."""
    return F.kl_div(
        student_logits.log_softmax(1),
        teacher_logits.log_softmax(1),
        log_target=True,
        reduction="batchmean",
    )


def cross_entropy_with_teacher(teacher: nn.Module, weight: float) -> LossFn:
    """Cross-entropy on the batch's labels plus ``weight`` times :func:`kl_to_teacher`.

    The teacher sees the same (augmented) batch, in eval mode and without gradients; it is
    moved to the batch's device if needed, and its parameters are not otherwise touched.
    """
    teacher.eval()

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.x)
        with torch.no_grad():
            target = teacher.to(batch.x.device)(batch.x)
        return F.cross_entropy(logits, batch.y) + weight * kl_to_teacher(logits, target)

    return loss
