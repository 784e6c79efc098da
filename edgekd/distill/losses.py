"""Distillation loss terms. Every term has the same call shape:

    term(student: Outputs, teacher: Outputs, labels) -> scalar tensor

so methods compose by name (`kd`, later `at`, `pkt`, ...), each with its own weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Outputs:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class KDLoss:
    """Hinton et al.: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""

    def __init__(self, temperature: float = 4.0):
        self.temperature = temperature

    def __call__(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        T = self.temperature
        log_p_s = F.log_softmax(student.logits.float() / T, dim=1)
        log_p_t = F.log_softmax(teacher.logits.float() / T, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


class DistillObjective:
    """task_weight * CE + sum(weight * term) with a frozen teacher run under no_grad.

    The teacher sees exactly the batch the student sees (same augmentation), in eval mode.
    """

    def __init__(self, teacher: nn.Module, terms: list[tuple[float, object]],
                 task_weight: float = 1.0, label_smoothing: float = 0.0):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.terms = terms
        self.task_weight = task_weight
        self.label_smoothing = label_smoothing

    def __call__(self, model, x, y, idx):
        logits = model(x)
        loss = self.task_weight * F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if self.terms:
            with torch.no_grad():
                t_logits = self.teacher(x)
            s_out, t_out = Outputs(logits), Outputs(t_logits)
            for weight, term in self.terms:
                loss = loss + weight * term(s_out, t_out, y)
        return loss, logits
