"""A PNG grid for a person to look at: image | IG map | overlaid image, one row per sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekd.io import atomic_path


def pick_indices(labels: torch.Tensor, n: int) -> list[int]:
    """n indices round-robin over the classes (the first image of each class, then the second...)."""
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in sorted(set(labels.tolist()))]
    out: list[int] = []
    k = 0
    while len(out) < min(n, len(labels)):
        for members in by_class:
            if k < len(members) and len(out) < n:
                out.append(members[k])
        k += 1
    return out


def _heat(m: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB in a black-red-yellow-white ramp (no plotting library needed)."""
    return np.stack([np.clip(3 * m, 0, 1), np.clip(3 * m - 1, 0, 1), np.clip(3 * m - 2, 0, 1)], -1)


def grid_png(path: str | Path, images: torch.Tensor, maps: torch.Tensor, captions: list[str],
             blend: float = 0.5, scale: int = 4) -> Path:
    """Write the grid: `images` uint8 (N, 3, H, W), `maps` (N, H, W); returns the path."""
    from PIL import Image, ImageDraw

    x = images.float().div(255.0).permute(0, 2, 3, 1).numpy()
    m = maps.float().numpy()
    lo = m.min(axis=(1, 2), keepdims=True)
    hi = m.max(axis=(1, 2), keepdims=True)
    m = (m - lo) / np.maximum(hi - lo, 1e-12)
    # The overlay as the student sees it (power s = 1, the map grey in all 3 channels).
    over = (1 - blend) * x + blend * m[..., None]
    n, h, w = m.shape
    cell, pad, head, label_w = h * scale, 4, 18, 96
    width = label_w + 3 * (cell + pad) + pad
    canvas = Image.new("RGB", (width, head + n * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(("image", "IG map", f"overlay ({blend:g})")):
        draw.text((label_w + pad + j * (cell + pad), 3), title, fill="black")
    for i in range(n):
        y0 = head + i * (cell + pad)
        draw.text((4, y0 + cell // 2 - 6), captions[i], fill="black")
        for j, arr in enumerate((x[i], _heat(m[i]), over[i])):
            tile = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))
            canvas.paste(tile.resize((cell, cell), Image.NEAREST), (label_w + pad + j * (cell + pad), y0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
