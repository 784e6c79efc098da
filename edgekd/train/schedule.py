"""Learning-rate schedules as pure functions of the step: nothing to save, resume is exact."""

from __future__ import annotations

import math


def lr_at(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based) of `total_steps`."""
    t = min(step / max(total_steps, 1), 1.0)
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "onecycle":
        # torch's OneCycleLR defaults: 30 % warm-up from lr/25, cosine down to lr/25e4.
        start, end, pct = base_lr / 25.0, base_lr / 25e4, 0.3
        if t < pct:
            return start + (base_lr - start) * 0.5 * (1 - math.cos(math.pi * t / pct))
        u = (t - pct) / (1 - pct)
        return end + (base_lr - end) * 0.5 * (1 + math.cos(math.pi * u))
    raise ValueError(f"unknown schedule {schedule!r}")
