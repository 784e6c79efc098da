"""Batched, seeded augmentation on tensors: random crop with zero padding and horizontal flip
(the papers' CIFAR recipe, for small inputs), or RandomResizedCrop and flip (for 96 px and up).

Geometric parameters are drawn once per sample from the engine's generator and applied to
every channel of the input, so extra channels stacked on the image (an IG map) get the same
geometry as the pixels, and an interrupted run resumes with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    crop_padding: int = 4  # RandomCrop(size, padding) as in the papers (4 px at 32x32)
    hflip: bool = True


@dataclass(frozen=True)
class ResizedCropSettings(AugmentSettings):
    """RandomResizedCrop (an area fraction in `scale`, an aspect ratio in `ratio`, resized back
    to the input size) instead of the padded crop. The stored image is already the centre crop
    at the input size, so the crop cannot reach outside it: a milder lower bound than
    torchvision's 0.08, which is made for ImageNet from scratch."""

    crop_padding: int = 0
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


RESIZED_CROP_FROM = 96  # input sizes from which `auto` picks RandomResizedCrop


def augment(x: torch.Tensor, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """The run's geometric augmentation of a float batch (any number of channels)."""
    if isinstance(settings, ResizedCropSettings):
        return random_resized_crop_flip(x, settings, generator)
    return random_crop_flip(x, settings, generator)


def random_resized_crop_flip(x: torch.Tensor, settings: ResizedCropSettings,
                             generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop parameters (10 tries, then the central crop), drawn per
    sample from `generator`, applied with transforms.v2's `resized_crop`; then flips."""
    from torchvision.transforms.v2 import functional as TF

    b, _, h, w = x.shape
    area = h * w
    log_r = torch.log(torch.tensor(settings.ratio))
    out = torch.empty_like(x)
    for i in range(b):
        u = torch.rand(10, 4, generator=generator)  # all tries drawn: a fixed count per sample
        box = None
        for t in range(10):
            target = area * (settings.scale[0] + (settings.scale[1] - settings.scale[0]) * u[t, 0])
            aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[t, 1])
            cw = int(round(float(torch.sqrt(target * aspect))))
            ch = int(round(float(torch.sqrt(target / aspect))))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(u[t, 2] * (h - ch + 1))
                left = int(u[t, 3] * (w - cw + 1))
                box = (top, left, ch, cw)
                break
        top, left, ch, cw = box or (0, 0, h, w)
        out[i] = TF.resized_crop(x[i], top, left, ch, cw, [h, w], antialias=True)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    if settings.hflip:
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


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
