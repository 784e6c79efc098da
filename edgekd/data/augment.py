"""Batched, seeded augmentation on tensors: random crop with zero padding and horizontal flip.

Geometric parameters are drawn once per sample and applied to every channel of the input, so
extra channels stacked on the image (an attribution map, later) move with the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    crop_padding: int = 4  # RandomCrop(size, padding) as in the papers (4 px at 32x32)
    hflip: bool = True


def random_crop_flip(
    x: torch.Tensor, settings: AugmentSettings, generator: torch.Generator
) -> torch.Tensor:
    """Crop each sample at a random offset from its zero-padded copy, and flip half of them."""
    b, _, h, w = x.shape
    p = settings.crop_padding
    # Draw on the CPU generator so results do not depend on the device.
    oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    if p > 0:
        padded = F.pad(x, (p, p, p, p))
        rows = (oy[:, None] + torch.arange(h)).to(x.device)  # (b, h)
        cols = (ox[:, None] + torch.arange(w)).to(x.device)  # (b, w)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        # (b, h, w, c) gather of the crop windows, back to (b, c, h, w)
        x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    if settings.hflip:
        flip = flip.to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()
