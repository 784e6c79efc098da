"""InDistill warm-up (Sarridis et al., WACV 2025): layer-wise curriculum feature distillation
through a channel-pruned teacher.

Decisions where the authors' public code was sloppy (docs/methods.md, InDistill):
- The pruned teacher layer is the unpruned layer restricted to the output filters that
  L1-norm structured pruning (torch.nn.utils.prune.ln_structured, n=1, dim=0) keeps, fed by
  the unpruned teacher's previous activation. Its BatchNorm keeps the teacher's statistics
  and affine parameters (the public code reset BN beta and left conv biases random), and the
  teacher stays in eval mode (the public code left BN in train mode).
- One optimizer for the whole warm-up (the public code re-created Adam every epoch).
- The pruned teacher is not fine-tuned (as in the paper).

Beyond the paper: a student that computes at a lower input size than its teacher (it
downscales inside, `Classifier.input_size`) pairs layers by total stride instead of by equal
spatial size, and the pruned teacher's map is average-pooled to the student's resolution
before the MSE, as the AT and FitNet terms already compare maps (edgekd.distill.losses). At
equal input sizes nothing changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from edgekd.distill.hooks import FeatureTap, forward_until, get_module
from edgekd.errors import EdgeKDError


class MappingError(EdgeKDError):
    """Teacher and student layers cannot be paired."""


@dataclass(frozen=True)
class LayerPair:
    student: str
    teacher: str
    student_channels: int
    teacher_channels: int
    size: tuple[int, int]


def last_conv(module: nn.Module) -> nn.Conv2d:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MappingError(f"teacher layer {type(module).__name__} has no Conv2d to prune")
    return convs[-1]


def kept_channels(conv: nn.Conv2d, keep: int) -> torch.Tensor:
    """Indices of the `keep` output filters that L1-norm structured pruning leaves, sorted."""
    if keep > conv.out_channels:
        raise MappingError(
            f"cannot prune a teacher layer of {conv.out_channels} channels to the student's {keep}: "
            "the student is wider there; map other layers (distill.indistill_layers) or use a wider teacher"
        )
    probe = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, groups=conv.groups,
                      bias=False)
    with torch.no_grad():
        probe.weight.copy_(conv.weight.detach().cpu())
    amount = conv.out_channels - keep
    prune.ln_structured(probe, name="weight", amount=amount, n=1, dim=0)
    mask = probe.weight_mask.flatten(1).amax(1) > 0
    return torch.nonzero(mask).flatten()


def _shapes(model: nn.Module, paths: list[str], input_size: int) -> dict[str, torch.Size]:
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad(), FeatureTap(model, paths) as tap:
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    model.train(was)
    return {p: tap[p].shape for p in paths}


def _level(shape: torch.Size, model: nn.Module, input_size: int) -> int:
    """The total stride of a feature map as a power of two, from the size `model` computes at
    (a downscaling student's own, else `input_size`)."""
    computes_at = getattr(model, "input_size", None) or input_size
    return round(math.log2(computes_at / shape[-1]))


def stage_outputs(model: nn.Module) -> tuple[tuple[str, ...], str | None]:
    """The stage outputs a model family declares (`stage_paths`, as paths from `model`) and
    its layout ("mbv2": stages pair by position); () and None when it declares none."""
    body = getattr(model, "body", model)
    prefix = "body." if body is not model else ""
    paths = getattr(body, "stage_paths", None)
    return (tuple(prefix + p for p in paths) if paths else ()), getattr(body, "layout", None)


def _spread(pairs: list, max_layers: int) -> list:
    """At most `max_layers` of `pairs`, evenly spread, always keeping the deepest."""
    if len(pairs) <= max_layers:
        return pairs
    step = (len(pairs) - 1) / (max_layers - 1) if max_layers > 1 else 0
    keep = sorted({round(len(pairs) - 1 - k * step) for k in range(max_layers)})
    return [pairs[i] for i in keep]


def auto_mapping(student: nn.Module, teacher: nn.Module, max_layers: int = 3,
                 input_size: int = 32) -> list[tuple[str, str]]:
    """Teacher/student layer pairs for the warm-up, shallow to deep, from the stage outputs
    the model families declare (`stage_paths`).

    Two MobileNetV2-family models (truncated, width, depth x width) pair stage by stage
    (24, 32, 64, 96, 160, 320 channels; the 16-channel stage is left out). Other families pair
    each student stage with the teacher stage of the same spatial size and the fewest channels
    that are still at least the student's (pruning narrows, never widens). Anything else is a
    MappingError naming the layers and the setting to pass.
    """
    s_paths, s_layout = stage_outputs(student)
    t_paths, t_layout = stage_outputs(teacher)
    fix = "give distill.indistill_layers as STUDENT_PATH:TEACHER_PATH pairs"
    if not s_paths or not t_paths:
        who, model = ("student", student) if not s_paths else ("teacher", teacher)
        raise MappingError(f"no automatic InDistill layer mapping: the {who} "
                           f"({type(getattr(model, 'body', model)).__name__}) declares no stage "
                           f"outputs; {fix} of equal spatial size")
    if s_layout == t_layout == "mbv2":
        n = min(len(s_paths), len(t_paths))
        pairs = list(zip(s_paths[1:n], t_paths[1:n], strict=True))
        if not pairs:
            raise MappingError("no teacher/student layers can be mapped for InDistill: the "
                               "student is too shallow (only its 16-channel stage is left)")
        return _spread(pairs, max_layers)
    s_shapes = _shapes(student, list(s_paths), input_size)
    t_shapes = _shapes(teacher, list(t_paths), input_size)
    pairs = []
    for s in s_paths:
        ss = s_shapes[s]
        fits = [t for t in t_paths if len(t_shapes[t]) == 4 and len(ss) == 4
                and _level(t_shapes[t], teacher, input_size) == _level(ss, student, input_size)
                and t_shapes[t][1] >= ss[1]]
        if fits:
            best = min(fits, key=lambda t: (t_shapes[t][1], -t_paths.index(t)))
            if not pairs or t_paths.index(best) > t_paths.index(pairs[-1][1]):
                pairs.append((s, best))
    if not pairs:
        def listing(paths, shapes):
            return ", ".join(f"{p} {shapes[p][1]}x{shapes[p][-1]}" for p in paths
                             if len(shapes[p]) == 4)
        raise MappingError(
            "no teacher/student layers can be mapped for InDistill (no stage of equal stride "
            f"where the teacher is at least as wide): student {listing(s_paths, s_shapes)}; "
            f"teacher {listing(t_paths, t_shapes)} (channels x size); {fix}, or use a wider teacher")
    return _spread(pairs, max_layers)


def build_mapping(student: nn.Module, teacher: nn.Module, pairs: list[tuple[str, str]],
                  input_size: int) -> list[LayerPair]:
    """Check the pairs exist and have equal total strides (equal spatial sizes unless the
    student computes at a lower input size); record their widths."""
    if not pairs:
        raise MappingError("indistill needs at least one mapped layer pair")
    s_shapes = _shapes(student, [s for s, _ in pairs], input_size)
    t_shapes = _shapes(teacher, [t for _, t in pairs], input_size)
    out = []
    for s, t in pairs:
        ss, ts = s_shapes[s], t_shapes[t]
        if len(ss) != 4 or len(ts) != 4:
            raise MappingError(f"InDistill maps feature maps (N, C, H, W); {s} or {t} is not one")
        if _level(ss, student, input_size) != _level(ts, teacher, input_size):
            raise MappingError(
                f"spatial sizes of {s} {tuple(ss[-2:])} and {t} {tuple(ts[-2:])} differ: map "
                "layers of equal resolution"
            )
        get_module(teacher, t)
        out.append(LayerPair(s, t, ss[1], ts[1], tuple(ss[-2:])))
    return out


def layer_epochs(n_layers: int, a: int = 2, b: int = 1, share: float | None = None,
                 total: int | None = None) -> list[int]:
    """Epochs of each mapped layer (shallow to deep). Absolute (`share` None): layer l (from 1)
    trains S_l = a + b*l epochs, as the public code (docs/methods.md): 3, 4 and 5 at a = 2,
    b = 1. As a share of the student's `total` epochs: round(share * total) epochs (at least
    one per layer) split in the proportions of S_l, largest remainders first, ties to the
    deeper layer; the papers' 12 of 60 is share 0.2, and at 60 epochs both forms agree."""
    weights = []
    for layer in range(1, n_layers + 1):
        length = a + b * layer
        if length < 1:
            raise MappingError(f"InDistill layer {layer} gets {length} epochs: choose a, b so a + b*l >= 1")
        weights.append(length)
    if share is None or not n_layers:
        return weights
    if total is None:
        raise ValueError("a warm-up share needs the student's total epochs")
    budget = max(n_layers, round(share * total))
    exact = [budget * w / sum(weights) for w in weights]
    lengths = [max(1, int(e)) for e in exact]
    # hand out what rounding down left, largest remainder first (ties: the deeper layer)
    order = sorted(range(n_layers), key=lambda i: (exact[i] - int(exact[i]), i), reverse=True)
    for i in order[: max(0, budget - sum(lengths))]:
        lengths[i] += 1
    while sum(lengths) > budget:  # the one-epoch floors overshot: trim the longest, shallow first
        i = max(range(n_layers), key=lambda j: (lengths[j], -j))
        lengths[i] -= 1
    return lengths


def curriculum(n_layers: int, a: int = 2, b: int = 1, share: float | None = None,
               total: int | None = None) -> list[tuple[int, int]]:
    """(first_epoch, last_epoch) of each layer, 1-based, from `layer_epochs`: at a = 2, b = 1
    (absolute) the public code's switch points a+1, a+1+a+2, ... (docs/methods.md)."""
    spans, start = [], 1
    for length in layer_epochs(n_layers, a, b, share, total):
        spans.append((start, start + length - 1))
        start += length
    return spans


def warmup_epochs(n_layers: int, a: int = 2, b: int = 1, share: float | None = None,
                  total: int | None = None) -> int:
    """Epochs of the whole warm-up: the sum of the layers' epochs."""
    return sum(layer_epochs(n_layers, a, b, share, total))


class InDistillObjective:
    """Stage 1: MSE between the active student layer's map and the pruned teacher layer's map.

    `set_epoch` (called by the engine) moves the curriculum; earlier layers are not frozen.
    """

    uses_all_parameters = False  # layers after the active one get no gradient

    def __init__(self, teacher: nn.Module, mapping: list[LayerPair], a: int = 2, b: int = 1,
                 share: float | None = None, total: int | None = None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.mapping = mapping
        self.spans = curriculum(len(mapping), a, b, share, total)
        self.epochs = self.spans[-1][1]
        self.kept = []
        for pair in mapping:
            conv = last_conv(get_module(teacher, pair.teacher))
            if conv.out_channels != pair.teacher_channels:
                raise MappingError(f"the last conv of {pair.teacher} does not produce its output")
            idx = kept_channels(conv, pair.student_channels)
            self.kept.append(idx.to(next(teacher.parameters()).device))
        self.active = 0

    def layer_for_epoch(self, epoch: int) -> int:
        for layer, (first, last) in enumerate(self.spans):
            if first <= epoch <= last:
                return layer
        return len(self.spans) - 1

    def set_epoch(self, epoch: int) -> None:
        self.active = self.layer_for_epoch(epoch)

    def __call__(self, model, x, y, idx):
        pair = self.mapping[self.active]
        with FeatureTap(model, [pair.student]) as s_tap:
            logits = model(x)
        self.teacher.eval()
        with torch.no_grad():  # the teacher runs only as far as the active layer
            target = forward_until(self.teacher, pair.teacher, x)
        target = target.index_select(1, self.kept[self.active])
        mine = s_tap[pair.student]
        if target.shape[-2:] != mine.shape[-2:]:  # a student at a lower input size
            target = F.adaptive_avg_pool2d(target, mine.shape[-2:])
        loss = F.mse_loss(mine.float(), target.float())
        return loss, logits
