"""One way to make a model: `create_model(name, num_classes, mean, std)`.

Every model is wrapped in `Classifier`, which holds the input normalisation as buffers: the
model takes raw [0, 1] RGB pixels, the statistics travel inside the checkpoint, and the ONNX
export has them folded into the graph, so a device feeds raw pixels.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import nn

from edgekd.errors import ModelError
from edgekd.models import mobilenetv2_cifar as mbv2
from edgekd.models import mobilenetv3_cifar as mbv3
from edgekd.models import resnet_cifar as resnet
from edgekd.models import shufflenetv2_cifar as shufflenet
from edgekd.models.profile import count_macs, count_params


class Classifier(nn.Module):
    """Normalise raw [0, 1] pixels with the run's mean/std, then run the network (`body`).

    With `input_size` (a student at a lower resolution than its teacher) the pixels are first
    downscaled to input_size x input_size inside the model: an exact box filter (average
    pooling) for an integer factor, bilinear otherwise. The model, and its ONNX export, thus
    take the same images as the teacher (a drop-in replacement; samples, calibration sets and
    the device harness feed both alike) while the network computes at the lower resolution.
    """

    def __init__(self, body: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_size: int | None = None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.body = body
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if s is not None and tuple(x.shape[-2:]) != (s, s):
            # plain ints: the exported graph has a fixed spatial size (only the batch varies)
            h, w = int(x.shape[-2]), int(x.shape[-1])
            if h % s == 0 and w % s == 0:
                x = nn.functional.avg_pool2d(x, (h // s, w // s))
            else:
                x = nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self.body((x - self.mean) / self.std)


@dataclass(frozen=True)
class _Entry:
    name: str
    family: str
    build: Callable[[int], nn.Module]
    input_size: int
    description: str


_REGISTRY: dict[str, _Entry] = {}


def _register(name, family, build, input_size, description):
    _REGISTRY[name] = _Entry(name, family, build, input_size, description)


_register(
    "mbv2_cifar", "mobilenetv2-cifar", mbv2.mobilenet_v2_cifar, 32,
    "CIFAR MobileNetV2, width 1.0 (the papers' teacher)",
)
for _L in mbv2.TRUNCATIONS:
    _register(
        f"mbv2_cifar_trunc{_L}", "truncated", functools.partial(mbv2.TruncatedMobileNetV2, removed=_L),
        32, f"teacher features[:-{_L}] + GAP + Linear (paper's truncated student)",
    )
for _w in mbv2.WIDTHS:
    _register(
        f"mbv2_cifar_w{_w}", "width", functools.partial(mbv2.mobilenet_v2_cifar, width_mult=_w),
        32, f"CIFAR MobileNetV2, width multiplier {_w} (fewer MACs, not only fewer params)",
    )
for _d in mbv2.GRID_DEPTHS:
    for _w in mbv2.GRID_WIDTHS:
        _register(
            f"mbv2_cifar_d{_d}_w{_w}", "depth-width",
            functools.partial(mbv2.mobilenet_v2_cifar, width_mult=_w, depth_mult=_d), 32,
            f"CIFAR MobileNetV2, ceil(n x {_d}) blocks per stage, width {_w}",
        )
for _v in mbv3.VARIANTS:
    for _w in mbv3.WIDTHS:
        _register(
            f"mbv3_{_v}_cifar" + ("" if _w == 1.0 else f"_w{_w}"), "mobilenetv3-cifar",
            functools.partial(mbv3.mobilenet_v3_cifar, variant=_v, width_mult=_w), 32,
            f"torchvision MobileNetV3-{_v.capitalize()}, width {_w}, CIFAR strides (total 8)",
        )
for _w in shufflenet.WIDTHS:
    _register(
        f"shufflenetv2_cifar_x{_w}", "shufflenetv2-cifar",
        functools.partial(shufflenet.shufflenet_v2_cifar, width=_w), 32,
        f"torchvision ShuffleNetV2 x{_w}, stride-1 stem and no max-pool (total stride 8)",
    )
for _depth in resnet.DEPTHS:
    for _w in resnet.WIDTHS:
        _register(
            f"resnet{_depth}_cifar" + ("" if _w == 1 else f"_w{_w}"), "resnet-cifar",
            functools.partial(resnet.CifarResNet, depth=_depth, width=_w), 32,
            f"CIFAR ResNet-{_depth} ({round(16 * _w)}/{round(32 * _w)}/{round(64 * _w)} channels; dense 3x3 convolutions)",
        )


TIMM = "timm:"  # prefix of a timm model name (pip install 'edgekd[timm]')


@functools.cache
def _torchvision_names() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def timm_module():
    """timm, imported on first use: it is an optional extra."""
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need timm: pip install 'edgekd[timm]'") from None
    return timm


@functools.cache
def _timm_names() -> frozenset[str]:
    return frozenset(timm_module().list_models())


def is_timm(name: str) -> bool:
    return name.startswith(TIMM)


def is_known(name: str) -> bool:
    if is_timm(name):
        return name[len(TIMM):] in _timm_names()
    return name in _REGISTRY or name in _torchvision_names()


def close_names(name: str, limit: int = 3) -> list[str]:
    """Known model names that look like `name` (for 'did you mean')."""
    if is_timm(name):
        pool = sorted(_timm_names())
        return [TIMM + n for n in difflib.get_close_matches(name[len(TIMM):], pool, limit, 0.6)]
    return difflib.get_close_matches(name, [*_REGISTRY, *sorted(_torchvision_names())], limit, 0.6)


def default_input_size(name: str) -> int:
    check_name(name)
    entry = _REGISTRY.get(name)
    if entry:
        return entry.input_size
    if is_timm(name):
        cfg = timm_module().get_pretrained_cfg(name[len(TIMM):])
        return int(cfg.input_size[-1]) if cfg is not None else 224
    return 224


def check_name(name: str, what: str = "model") -> None:
    """Raise ModelError for an unknown name, suggesting close known ones."""
    if not is_known(name):
        close = close_names(name)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(
            f"unknown {what} {name!r}: {hint}use a built-in name (`edgekd models`), a torchvision "
            "classification model such as resnet18, or timm:NAME such as timm:resnet18"
        )


def list_models() -> list[str]:
    """The built-in families (torchvision classification models are accepted by name too)."""
    return list(_REGISTRY)


def create_body(name: str, num_classes: int) -> nn.Module:
    """The network alone, randomly initialised."""
    check_name(name)
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry.build(num_classes)
    if is_timm(name):
        return timm_module().create_model(name[len(TIMM):], pretrained=False, num_classes=num_classes)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def create_model(
    name: str,
    num_classes: int,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    input_size: int | None = None,
) -> Classifier:
    """Build a randomly initialised model wrapped with its input normalisation (and, with
    `input_size`, its downscaling: see `Classifier`)."""
    return Classifier(create_body(name, num_classes), mean, std, input_size)


@functools.cache
def min_input_size(name: str) -> int:
    """The smallest square input `name` takes: its total stride (8 for the CIFAR families, 32
    for ImageNet networks), below which its deepest feature map would be under one pixel."""
    model = create_model(name, 10).eval()
    sizes: list[int] = []

    def record(_m, inputs, out):
        if inputs[0].shape[-1] > 1:  # not the 1x1 convolutions after a global pool (SE blocks)
            sizes.append(out.shape[-1])

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d)]
    probe = 256
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, probe, probe))
    except (RuntimeError, ValueError, AssertionError):
        return 1  # a network of one fixed input size (a ViT at 224): nothing to check here
    finally:
        for h in hooks:
            h.remove()
    return max(1, probe // max(1, min(sizes))) if sizes else 1


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    params: int
    macs: int
    input_size: int
    compression_factor: float | None
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


def describe(
    name: str,
    num_classes: int = 10,
    input_size: int | None = None,
    teacher: str | None = "mbv2_cifar",
) -> ModelInfo:
    """Params (trainable), MACs at the input size, and compression factor vs `teacher`."""
    check_name(name)
    entry = _REGISTRY.get(name)
    size = input_size or default_input_size(name)
    model = create_model(name, num_classes)
    params = count_params(model)
    cf = None
    if teacher is not None:
        cf = round(_params(teacher, num_classes) / params, 2)
    return ModelInfo(
        name=name,
        family=entry.family if entry else ("timm" if is_timm(name) else "torchvision"),
        params=params,
        macs=count_macs(model, size),
        input_size=size,
        compression_factor=cf,
        description=entry.description if entry else (
            f"timm {name[len(TIMM):]}" if is_timm(name) else f"torchvision.models.{name}"),
    )


@functools.cache
def _params(name: str, num_classes: int) -> int:
    return count_params(create_model(name, num_classes))
