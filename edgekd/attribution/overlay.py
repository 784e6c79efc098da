"""The IG overlay augmentation (docs/methods.md), as an engine `BatchTransform`.

Space: the overlay happens on raw [0, 1] pixels, the student's input space (students, like
teachers, normalise inside the model), after the geometric augmentation. The map is stacked
on the image as a fourth channel before the random crop (padded or resized) and flip, so it
moves with the pixels
the student sees, and is split off afterwards. Then per sample: map ** s with s log-uniform
in [1, 2], min-max to [0, 1], copied to 3 channels, and with probability p
x := (1 - blend) * x + blend * map. The crop and flip draw from the engine's per-epoch
generator exactly as the plain augmentation does, so a run with overlays sees the same
geometry as one without (a teacher's soft labels recorded on the clean views serve both,
edgekd.distill.soft_labels); the overlay's own draws come from a second generator seeded by
the epoch's. An interrupted run resumes bit for bit. Nothing is overlaid at test time.

With `clean_for_teacher` the transform returns `(overlaid, clean)`: the same crop and flip
without the overlay, for a teacher whose KD/AT targets should come from the clean image (the
papers' code took its teacher outputs from un-overlaid images).
"""

from __future__ import annotations

import math

import torch

from edgekd.data.augment import AugmentSettings, augment


def overlay(x: torch.Tensor, maps: torch.Tensor, p: float, blend: float,
            g: torch.Generator) -> torch.Tensor:
    """Blend `maps` (B, H, W, >= 0, already aligned with `x`) into `x` (B, 3, H, W) with prob. p."""
    b = len(x)
    # Drawn on the CPU generator, like the crop offsets: the same numbers on any device.
    s = torch.exp(torch.rand(b, generator=g) * math.log(2.0)).to(x.device)
    apply = (torch.rand(b, generator=g) < p).to(x.device)
    m = maps.clamp_min(0).pow(s[:, None, None])
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    m = (m - lo) / (hi - lo).clamp_min(1e-12)
    mixed = (1.0 - blend) * x + blend * m[:, None]
    return torch.where(apply[:, None, None, None], mixed, x)


class IGOverlay:
    """Crop/flip image and map together, then overlay (a `BatchTransform` for the engine)."""

    def __init__(self, maps: torch.Tensor, settings: AugmentSettings, p: float, blend: float,
                 clean_for_teacher: bool = False):
        # (N, H, W), index-aligned with the training split; float16 is fine. A tensor (moved
        # to the batch's device once) or a reader from disk (`MapRows`, rows read per batch).
        self.maps = maps
        self.settings = settings
        self.p, self.blend = p, blend
        self.clean_for_teacher = clean_for_teacher
        self._epoch_generator: torch.Generator | None = None
        self._draws = torch.Generator()

    def _overlay_generator(self, g: torch.Generator) -> torch.Generator:
        """The overlay's generator, restarted whenever the engine hands a new epoch generator
        (kept referenced, so identity cannot be reused): the same epoch replayed twice in one
        process, as the soft-label cache does before training, draws the same overlays."""
        if g is not self._epoch_generator:
            self._epoch_generator = g
            self._draws.manual_seed((g.initial_seed() * 0x9E3779B1 + 0x632BE5AB) % 2**63)
        return self._draws

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, g: torch.Generator):
        if isinstance(self.maps, torch.Tensor) and self.maps.device != x.device:
            self.maps = self.maps.to(x.device)
        m = self.maps[idx.to(self.maps.device)].to(x.device).float()
        both = torch.cat([x.float().div_(255.0), m[:, None]], dim=1)
        both = augment(both, self.settings, g)
        clean = both[:, :3]
        mixed = overlay(clean, both[:, 3], self.p, self.blend, self._overlay_generator(g))
        return (mixed, clean.contiguous()) if self.clean_for_teacher else mixed
