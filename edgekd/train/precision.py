"""Mixed precision and compilation of a training step, per device.

`amp` (a TrainConfig setting):
- `auto`: bf16 autocast where the hardware computes in bf16 natively: a CUDA GPU (fp16 with a
  gradient scaler on one without bf16), or a CPU with AVX512-BF16, AMX or the Arm BF16
  extension; FP32 otherwise. On a CPU that only emulates bf16 (plain AVX-512 or AVX2), autocast
  converts every tensor twice and computes at FP32 speed, so FP32 it stays.
- `bf16`: bf16 autocast, refused in one line where the device lacks it.
- `off`: FP32.

Under `auto` a CPU's choice is measured per model and batch shape (`choose_autocast`): bf16
wins at CIFAR sizes and loses on tiny inputs (benchmarks/results/train_throughput.json).
Losses and evaluation stay in FP32.
"""

from __future__ import annotations

import contextlib
import copy
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from edgekd.config.sections import parse_amp
from edgekd.errors import EdgeKDError

# /proc/cpuinfo flags of native bf16 arithmetic: x86 AVX512-BF16 and AMX, Arm's BF16 (aarch64
# lists its features under "Features").
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no native bf16 assumed
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_native_bf16() -> list[str]:
    """The native-bf16 flags this CPU has (empty: none)."""
    return [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype of a training step on `device` (None: FP32). Raises when `bf16` is
    asked of a device without it."""
    mode = parse_amp(mode)
    if mode == "off":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if mode == "bf16":
            raise EdgeKDError(f"amp=bf16: {torch.cuda.get_device_name(device)} has no bf16: "
                              "use --set teacher.train.amp=auto (fp16) or off")
        return torch.float16
    if device.type == "cpu":
        if cpu_native_bf16():
            return torch.bfloat16
        if mode == "bf16":
            raise EdgeKDError("amp=bf16: this CPU has no native bf16 (AVX512-BF16, AMX or Arm "
                              "BF16) and would emulate it slower than FP32: use amp=auto or off")
    return None


_CHOSEN: dict[tuple, tuple[torch.dtype | None, str]] = {}


def choose_autocast(model: nn.Module, example: torch.Tensor, device: torch.device, mode: str,
                    steps: int = 3) -> tuple[torch.dtype | None, str | None]:
    """The autocast dtype of training `model` on batches shaped like `example`, and a note
    saying how it was chosen (None: nothing to say).

    `auto` on a CPU with native bf16 measures instead of assuming: bf16 autocast trains
    ResNet-20 2x faster at 32 px, batch 128, but the digits' 16 px MobileNetV2 1.7x slower,
    where converting tiny tensors costs more than the arithmetic saves. So a copy of the model
    trains `steps` steps in each precision, alternating, and bf16 is kept only when it is 10 %
    faster. The copy keeps the run's weights and random numbers untouched; a process asks
    once per model shape and batch."""
    dtype = autocast_dtype(device, mode)
    if parse_amp(mode) != "auto" or device.type != "cpu" or dtype is None:
        return dtype, None
    params = sum(p.numel() for p in model.parameters())
    key = (type(model).__name__, params, tuple(example.shape), example.is_contiguous())
    if key not in _CHOSEN:
        _CHOSEN[key] = _measure(model, example, device, steps)
    return _CHOSEN[key]


def _measure(model: nn.Module, example: torch.Tensor, device: torch.device, steps: int):
    probe = copy.deepcopy(model).to(device).train()
    for p in probe.parameters():
        p.requires_grad_(True)
    x = example.to(device)
    rng = torch.random.get_rng_state()  # dropout draws from the global generator
    best = {None: float("inf"), torch.bfloat16: float("inf")}
    try:
        for _ in range(2):  # two rounds, alternating, so neither precision gets a quieter moment
            for dtype in best:
                for i in range(steps + 1):  # the first step of a block warms caches up
                    t0 = time.perf_counter()
                    with autocast(device, dtype):
                        out = probe(x)
                    out.float().logsumexp(1).mean().backward()
                    probe.zero_grad(set_to_none=True)
                    if i:
                        best[dtype] = min(best[dtype], time.perf_counter() - t0)
    finally:
        torch.random.set_rng_state(rng)
    ratio = best[None] / best[torch.bfloat16]
    if ratio >= 1.1:
        return torch.bfloat16, f"bf16 autocast (measured {ratio:.2f}x FP32's speed)"
    return None, f"FP32 (bf16 autocast measured {ratio:.2f}x its speed)"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of a training step (a no-op for FP32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def needs_scaler(device: torch.device, dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 has FP32's exponent range."""
    return device.type == "cuda" and dtype == torch.float16
