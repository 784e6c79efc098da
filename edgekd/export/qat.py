"""Fake quantization of a PyTorch model where ONNX Runtime's QDQ graph will quantize it, for
quantization-aware distillation (the `qat` stage, `edgekd quantize --qat-epochs`).

Built on torch's core fake-quantize operators (`torch.fake_quantize_per_tensor_affine`,
`torch.fake_quantize_per_channel_affine`: straight-through gradients), not on a QAT
framework (docs/int8.md explains the choice). What is simulated is what the exported INT8
graph computes (calibration/ort_int8.py):

- every Conv2d / Linear input, per tensor, with the range the PTQ calibration measures
  (min-max over the calibration set, ORT's formula; symmetric for TensorRT); the ranges are
  fixed at those PTQ scales for the fine-tuning;
- every Conv2d / Linear weight, per output channel, symmetric, *after* the BatchNorm that
  follows it is folded in: the exported graph quantizes the folded weight W * gamma / sigma,
  so that is what is fake-quantized here (BatchNorm statistics are frozen while it trains).

Residual additions and pooling, which the ONNX graph also quantizes, are not simulated; the
accuracy that counts is measured on the real INT8 graph afterwards. `attach` changes the model
in place and returns the handle that removes every hook and parametrization again, leaving a
plain model with the fine-tuned weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

QUANTIZED = (nn.Conv2d, nn.Linear)
BATCHNORM = nn.modules.batchnorm._BatchNorm


def activation_qparams(low: float, high: float, symmetric: bool) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of an INT8 activation with range [low, high], as ONNX
    Runtime computes them (the range always contains 0; symmetric: [-127, 127], zero point 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        bound = max(-low, high)
        low, high, qmin, qmax = -bound, bound, -127, 127
    else:
        qmin, qmax = -128, 127
    scale = (high - low) / (qmax - qmin) if high > low else 1.0
    zero = 0 if symmetric else int(round(qmin - low / scale))
    return scale, max(qmin, min(qmax, zero)), qmin, qmax


class _WeightFakeQuant(nn.Module):
    """Parametrization of a Conv2d/Linear weight: per-output-channel symmetric INT8 of the
    weight as exported, i.e. with the following BatchNorm folded in, expressed back in the
    unfolded weight so the module still computes conv -> BatchNorm."""

    def __init__(self, bn: nn.Module | None):
        super().__init__()
        self._bn = [bn] if bn is not None else []  # a list: not a submodule (no second owner)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (w.dim() - 1)
        fold = None
        if self._bn:
            bn = self._bn[0]
            fold = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                fold = fold * bn.weight
            fold = fold.view(shape)
        folded = w * fold if fold is not None else w
        scale = folded.detach().abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0
        zero = torch.zeros(scale.numel(), dtype=torch.int32, device=w.device)
        q = torch.fake_quantize_per_channel_affine(folded, scale.float(), zero, 0, -127, 127)
        # A channel whose BatchNorm scale is 0 is dead in the graph either way.
        return q / torch.where(fold == 0, torch.ones_like(fold), fold) if fold is not None else q


@dataclass
class FakeQuant:
    """The fake quantization attached to a model; `remove()` restores the plain model."""

    model: nn.Module
    ranges: dict[str, tuple[float, float]]  # module path -> calibrated input range
    folded: dict[str, str]  # conv/linear path -> the BatchNorm folded into its weight
    symmetric: bool
    _handles: list = field(default_factory=list)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module in self.model.modules():
            if isinstance(module, QUANTIZED) and parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)

    def summary(self) -> dict:
        return {"simulated": "inputs (per tensor) and BatchNorm-folded weights (per channel) of "
                             "every Conv2d and Linear",
                "quantized_modules": len(self.ranges), "folded_batchnorms": len(self.folded),
                "symmetric_activations": self.symmetric}


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Conv2d/Linear -> the BatchNorm that directly consumes its output (found by running the
    model once and matching tensors), the pairs the ONNX export folds."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    pairs: dict[str, str] = {}
    handles = []

    def after(module, _inputs, output):
        produced[id(output)] = names[module]

    def before(module, inputs):
        source = produced.get(id(inputs[0]))
        if source is not None:
            pairs[source] = names[module]

    for m in model.modules():
        if isinstance(m, QUANTIZED):
            handles.append(m.register_forward_hook(after))
        elif isinstance(m, BATCHNORM):
            handles.append(m.register_forward_pre_hook(before))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return pairs


@torch.no_grad()
def _input_ranges(model: nn.Module, images: torch.Tensor, batch_size: int) -> dict[str, tuple[float, float]]:
    """Min and max of every Conv2d/Linear input over `images` (float [0, 1] pixels)."""
    ranges: dict[str, list[float]] = {}
    handles = []

    def record(name):
        def hook(_module, inputs):
            x = inputs[0]
            low, high = float(x.min()), float(x.max())
            r = ranges.setdefault(name, [low, high])
            r[0], r[1] = min(r[0], low), max(r[1], high)
        return hook

    for name, m in model.named_modules():
        if isinstance(m, QUANTIZED):
            handles.append(m.register_forward_pre_hook(record(name)))
    try:
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {k: (v[0], v[1]) for k, v in ranges.items()}


def attach(model: nn.Module, calib_images: torch.Tensor, symmetric: bool = False,
           batch_size: int = 64) -> FakeQuant:
    """Fake-quantize `model` (in eval mode, on the device of `calib_images`) in place, with
    activation ranges calibrated on `calib_images` (float [0, 1] pixels, as the graph takes)."""
    model.eval()
    pairs = _conv_bn_pairs(model, calib_images[:2])
    ranges = _input_ranges(model, calib_images, batch_size)
    modules = dict(model.named_modules())
    fq = FakeQuant(model, ranges, pairs, symmetric)

    def quantize_input(scale, zero, qmin, qmax):
        def hook(_module, inputs):
            return (torch.fake_quantize_per_tensor_affine(inputs[0], scale, zero, qmin, qmax),
                    *inputs[1:])
        return hook

    for name, (low, high) in ranges.items():
        module = modules[name]
        fq._handles.append(module.register_forward_pre_hook(
            quantize_input(*activation_qparams(low, high, symmetric))))
        parametrize.register_parametrization(module, "weight", _WeightFakeQuant(
            modules[pairs[name]] if name in pairs else None))
    return fq


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm in eval mode (running statistics, not updated): the statistics the fake
    quantization folds into the weights stay those of the exported graph."""
    for m in model.modules():
        if isinstance(m, BATCHNORM):
            m.eval()


class FrozenBatchNormObjective:
    """An engine Objective that trains with BatchNorm frozen (QAT): delegates to `inner`."""

    def __init__(self, inner):
        self.inner = inner
        for attr in ("trainable", "set_epoch", "uses_all_parameters"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def __call__(self, model, x, y, idx, **kwargs):
        freeze_batchnorm(model)
        return self.inner(model, x, y, idx, **kwargs)
