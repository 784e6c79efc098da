"""Integrated-gradient maps of a frozen teacher with Captum, batched for throughput.

Input space. edgekd models take raw [0, 1] pixels and normalise inside (`Classifier`). IG is
invariant under that per-channel affine map when the baseline is mapped with it: with
z = (x - mean) / std, the path from baseline to image is the same straight line, dF/dx =
dF/dz / std and (x - b) = std * (z - z_b), so the attributions are identical. The papers' zero
baseline "in the teacher's normalised input space" is therefore the teacher's mean in raw
pixels, which is what `baselines(kind="zeros")` returns.

A map is the sum over colour channels of |attribution| (docs/methods.md), shape H x W.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgekd.config import IGConfig

# Rows (image x step pairs) per teacher forward on a CPU. Measured on the project's 2-core
# machine for the CIFAR MobileNetV2 at 32x32 (benchmarks/results/ig_throughput.json): beyond
# a few dozen rows the activations leave the caches and images/s drops, as for training.
CPU_MAX_ROWS = 32
# On a GPU more rows only help until the device is full; memory is the limit that matters.
CUDA_MAX_ROWS = 2048


@dataclass(frozen=True)
class IGSettings:
    """What a map depends on besides the teacher and the image (recorded in the manifest)."""

    steps: int = 50
    method: str = "gausslegendre"
    target: str = "label"  # label | prediction (the teacher's own top-1)
    baseline: str = "zeros"  # zeros (normalised space) | blur | noise
    seed: int = 0  # only the noise baseline draws random numbers

    @classmethod
    def from_config(cls, cfg: IGConfig, seed: int = 0) -> IGSettings:
        return cls(cfg.steps, cfg.method, cfg.target, cfg.baseline, seed)

    def identity(self) -> dict:
        d = asdict(self)
        if self.baseline != "noise":
            d.pop("seed")  # other baselines do not depend on it
        return d


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm running statistics, no dropout) and no parameter gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _ChannelsLast(nn.Module):
    """Feeds the teacher channels-last input: oneDNN / cuDNN convolutions (and their input
    gradients) run several times faster than in NCHW on this CPU (benchmarks/ig_throughput.py)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


# ---- baselines ---------------------------------------------------------------------------
def _index_generator(seed: int, index: int) -> torch.Generator:
    # One generator per image index: the noise does not depend on batching or on the rank.
    h = hashlib.sha256(f"edgekd-ig-noise:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") >> 1)


def baselines(teacher: nn.Module, x: torch.Tensor, kind: str, idx: torch.Tensor | None = None,
              seed: int = 0) -> torch.Tensor:
    """The IG baseline for a raw [0, 1] batch `x` (see the module docstring for `zeros`)."""
    if kind == "zeros":
        mean = getattr(teacher, "mean", None)
        if mean is None:
            return torch.zeros_like(x)
        return mean.to(x.device, x.dtype).expand_as(x).contiguous()
    if kind == "blur":
        from torchvision.transforms.v2.functional import gaussian_blur

        sigma = max(x.shape[-1] / 8.0, 0.5)  # 4 px at 32x32: the digit's strokes vanish
        k = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(x.shape[-2:]) // 2) - 1)
        return gaussian_blur(x, [k, k], [sigma, sigma])
    if kind == "noise":
        if idx is None:
            raise ValueError("the noise baseline needs the dataset indices")
        noise = [torch.rand(x.shape[1:], generator=_index_generator(seed, int(i))) for i in idx]
        return torch.stack(noise).to(x.device, x.dtype)
    raise ValueError(f"unknown IG baseline {kind!r}")


# ---- how many rows per forward -----------------------------------------------------------
def available_memory(device: torch.device) -> int:
    """Free memory in bytes: the GPU's free memory, or MemAvailable of this machine."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 30  # unknown: assume 1 GiB


def activation_bytes(model: nn.Module, input_size: int, device: torch.device) -> int:
    """Bytes of layer outputs one image produces in a forward pass (what backward keeps)."""
    total = 0

    def hook(_m, _inp, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


def auto_rows(model: nn.Module, input_size: int, device: torch.device) -> int:
    """Rows per forward from free memory (a quarter on CPU, half on GPU), capped where more
    rows stop paying: CPU caches, or a GPU already busy."""
    # x3: the saved activations, their gradients during backward, and allocator slack.
    per_row = 3 * max(activation_bytes(model, input_size, device), 1)
    share = 0.5 if device.type == "cuda" else 0.25
    rows = int(share * available_memory(device)) // per_row
    cap = CUDA_MAX_ROWS if device.type == "cuda" else CPU_MAX_ROWS
    return max(1, min(rows, cap))


def plan_batches(rows: int, steps: int) -> tuple[int, int]:
    """(images per Captum call, Captum's internal_batch_size) for `rows` rows per forward.

    Captum runs internal_batch_size // images steps per forward; the steps are spread evenly
    (50 steps at 32 rows: two forwards of 25, not 32 + 18).
    """
    if rows >= steps:
        return rows // steps, (rows // steps) * steps
    forwards = math.ceil(steps / rows)
    return 1, math.ceil(steps / forwards)


# ---- the maps ----------------------------------------------------------------------------
class MapComputer:
    """Computes IG maps (B, H, W) for raw uint8 batches with one frozen teacher and settings."""

    def __init__(self, teacher: nn.Module, settings: IGSettings, device: torch.device,
                 rows: int | None = None, input_size: int = 32):
        from captum.attr import IntegratedGradients

        self.teacher = freeze(teacher).to(device)
        self.settings = settings
        self.device = device
        self.rows = rows or auto_rows(self.teacher, input_size, device)
        self.images_per_call, self.internal_batch_size = plan_batches(self.rows, settings.steps)
        self.forward = _ChannelsLast(self.teacher)
        self.ig = IntegratedGradients(self.forward)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Maps (float32, CPU) for uint8 images (N, 3, H, W) with their labels and indices."""
        out = []
        b = self.images_per_call
        for i in range(0, len(images), b):
            x = images[i : i + b].to(self.device).float().div_(255.0)
            out.append(self._maps(x, labels[i : i + b].to(self.device), idx[i : i + b]))
        return torch.cat(out)

    def _maps(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s.target == "prediction":
            with torch.no_grad():
                y = self.forward(x).argmax(1)
        base = baselines(self.teacher, x, s.baseline, idx, s.seed)
        attr = self.ig.attribute(x, baselines=base, target=y, n_steps=s.steps, method=s.method,
                                 internal_batch_size=self.internal_batch_size)
        return attr.detach().abs().sum(1).float().cpu()
