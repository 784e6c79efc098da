"""Distillation loss terms. Every term has the same call shape:

    term(student: Outputs, teacher: Outputs, labels) -> scalar tensor

and declares the features it needs as module paths (`student_paths`, `teacher_paths`), which
`DistillObjective` taps with forward hooks; no model is rewritten to return features.
Methods compose by name (`kd+at`, `pkt+ig`, ...), each term with its own weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.hooks import FeatureTap


@dataclass
class Outputs:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class LossTerm:
    """Base: no features needed, nothing trainable."""

    name = "term"
    student_paths: tuple[str, ...] = ()
    teacher_paths: tuple[str, ...] = ()
    trainable: nn.Module | None = None

    def __call__(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class KDLoss(LossTerm):
    """Hinton et al.: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""

    name = "kd"

    def __init__(self, temperature: float = 4.0):
        self.temperature = temperature

    def __call__(self, student, teacher, labels):
        T = self.temperature
        log_p_s = F.log_softmax(student.logits.float() / T, dim=1)
        log_p_t = F.log_softmax(teacher.logits.float() / T, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def attention_map(fm: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: channel mean of fm^2, flattened, L2-normalised per sample."""
    return F.normalize(fm.float().pow(2).mean(1).flatten(1), dim=1)


class ATLoss(LossTerm):
    """Attention transfer: mean squared difference of the two attention maps (docs/methods.md).

    Maps of different spatial size are compared after resizing the teacher's to the student's.
    """

    name = "at"

    def __init__(self, student_path: str, teacher_path: str):
        self.student_paths, self.teacher_paths = (student_path,), (teacher_path,)

    def __call__(self, student, teacher, labels):
        fs = student.features[self.student_paths[0]]
        ft = teacher.features[self.teacher_paths[0]]
        if ft.shape[-2:] != fs.shape[-2:]:
            ft = F.adaptive_avg_pool2d(ft, fs.shape[-2:])
        return (attention_map(fs) - attention_map(ft)).pow(2).mean()


class PKTLoss(LossTerm):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018) on penultimate features.

    Cosine similarities within the batch, shifted to [0, 1] and row-normalised into
    conditional probabilities; loss = KL(teacher || student) averaged over the batch. Works
    across feature widths (1280-d teacher, 96-d student). The InDistill code's variant (an
    extra 1/(1+d) kernel and a Jeffreys divergence) is not used.

    Scale: each row's KL is summed over its B entries and the rows are averaged, i.e. the sum
    over the B x B matrix divided by B. Passalis' and RepDistiller's code take the mean over
    all B x B entries, so edgekd's value is B times theirs: a published weight w at batch B
    is w / B here (RepDistiller's 30000 at batch 64 is about 470).
    """

    name = "pkt"
    eps = 1e-7

    def __init__(self, student_path: str, teacher_path: str):
        self.student_paths, self.teacher_paths = (student_path,), (teacher_path,)

    def _probs(self, f: torch.Tensor) -> torch.Tensor:
        f = F.normalize(f.float().flatten(1), dim=1, eps=self.eps)
        sim = (f @ f.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    def __call__(self, student, teacher, labels):
        p_s = self._probs(student.features[self.student_paths[0]])
        p_t = self._probs(teacher.features[self.teacher_paths[0]])
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).sum(1).mean()


class FitNetLoss(LossTerm):
    """FitNets hint: a 1x1 conv regressor maps the student's map to the teacher's width; MSE."""

    name = "fitnet"

    def __init__(self, student_path: str, teacher_path: str, s_channels: int, t_channels: int):
        self.student_paths, self.teacher_paths = (student_path,), (teacher_path,)
        self.trainable = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)

    def __call__(self, student, teacher, labels):
        fs = self.trainable(student.features[self.student_paths[0]])
        ft = teacher.features[self.teacher_paths[0]]
        if ft.shape[-2:] != fs.shape[-2:]:
            ft = F.adaptive_avg_pool2d(ft, fs.shape[-2:])
        return F.mse_loss(fs.float(), ft.float())


class DistillObjective:
    """task_weight * CE + sum(weight * term), with a frozen teacher run under no_grad.

    The teacher sees the batch the student sees (same augmentation), in eval mode, unless the
    transform hands it a view of its own (`teacher_x`: the clean image under an IG overlay).
    Features the terms declare are tapped from both models by module path.

    `recorded`: the teacher's logits looked up by training index instead of a forward pass
    (edgekd.distill.soft_labels.CachedTeacher, which the engine moves from epoch to epoch);
    only terms on logits can use them.
    """

    def __init__(self, teacher: nn.Module | None, terms: list[tuple[float, LossTerm]],
                 task_weight: float = 1.0, label_smoothing: float = 0.0, recorded=None):
        self.recorded = recorded
        if recorded is not None:
            needs = [t.name for _, t in terms if t.teacher_paths]
            if needs:
                raise ValueError(f"recorded soft labels hold logits only; {', '.join(needs)} need the teacher")
        self.teacher = teacher.eval() if teacher is not None else None
        for p in self.teacher.parameters() if teacher is not None else ():
            p.requires_grad_(False)
        self.terms = terms
        self.task_weight = task_weight
        self.label_smoothing = label_smoothing
        self._s_paths = [p for _, t in terms for p in t.student_paths]
        self._t_paths = [p for _, t in terms for p in t.teacher_paths]
        extra = {t.name: t.trainable for _, t in terms if t.trainable is not None}
        self.trainable = nn.ModuleDict(extra) if extra else None

    def __call__(self, model, x, y, idx, teacher_x=None):
        """`teacher_x`: the teacher's own view of the batch (default: the student's `x`)."""
        with FeatureTap(model, self._s_paths) as s_tap:
            logits = model(x)
        loss = self.task_weight * F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if self.terms:
            if self.recorded is not None:
                t_out = Outputs(self.recorded(idx))
            else:
                self.teacher.eval()  # the engine may have put everything in train mode
                with torch.no_grad(), FeatureTap(self.teacher, self._t_paths) as t_tap:
                    t_logits = self.teacher(x if teacher_x is None else teacher_x)
                t_out = Outputs(t_logits, dict(t_tap.features))
            s_out = Outputs(logits, dict(s_tap.features))
            for weight, term in self.terms:
                loss = loss + weight * term(s_out, t_out, y)
        return loss, logits

    def set_epoch(self, epoch: int) -> None:
        if self.recorded is not None:
            self.recorded.set_epoch(epoch)

