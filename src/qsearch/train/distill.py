"""Knowledge distillation from the float model (Hinton et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qsearch.train.loop import LossFn


def distillation_loss(
    teacher: nn.Module, alpha: float, temperature: float, label_smoothing: float = 0.0
) -> LossFn:
    """``(1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher^T || p_student^T)``.

    The teacher runs in eval mode without gradients on the same (augmented) batch.
    """
    teacher.eval()

    def loss(logits: Tensor, labels: Tensor, images: Tensor) -> Tensor:
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        with torch.no_grad():
            target = F.softmax(teacher(images).float() / temperature, dim=1)
        log_student = F.log_softmax(logits.float() / temperature, dim=1)
        kl = F.kl_div(log_student, target, reduction="batchmean") * temperature**2
        return (1.0 - alpha) * ce + alpha * kl

    return loss
