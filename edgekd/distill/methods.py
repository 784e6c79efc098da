"""From a method string (`indistill+kd+at`) and the config to loss terms with their layers.

Layers are chosen automatically for the built-in CIFAR MobileNetV2 families and given as
`STUDENT_PATH:TEACHER_PATH` otherwise (config `distill.at_layer`, `distill.fitnet_layer`).
"""

from __future__ import annotations

from torch import nn

from edgekd.distill.hooks import get_module
from edgekd.distill.indistill import _shapes, stage_outputs
from edgekd.distill.losses import ATLoss, FitNetLoss, KDLoss, LossTerm, PKTLoss
from edgekd.errors import EdgeKDError

LOSS_TERMS = ("kd", "at", "pkt", "fitnet")
FEATURE_TERMS = ("at", "pkt", "fitnet")  # compare feature maps: need the live teacher


def parse_pair(text: str, what: str) -> tuple[str, str]:
    """'S:T' -> (S, T); a single path serves both models; a ':in' suffix stays with its path."""
    items: list[str] = []
    for part in text.split(":"):
        if part == "in" and items:
            items[-1] += ":in"
        else:
            items.append(part)
    if len(items) == 1 and items[0]:
        return items[0], items[0]
    if len(items) == 2 and all(items):
        return items[0], items[1]
    raise EdgeKDError(f"{what} {text!r}: use STUDENT_PATH:TEACHER_PATH, or one PATH for both")


def _features(model: nn.Module):
    return getattr(getattr(model, "body", None), "features", None)


# The full CIFAR MobileNetV2 has 19 `features` modules; the papers index into that list.
FULL_DEPTH = 19


def at_divisor(removed: int | None) -> int:
    """docs/methods.md: d = 2 for L in 3-7 (and the full-depth families), 4 for 9-13, 8 for 15, 20 for 17."""
    if removed is None:
        return 2
    return 2 if removed <= 7 else 4 if removed <= 13 else 8 if removed <= 15 else 20


def auto_at_layer(student: nn.Module, teacher: nn.Module, removed: int | None) -> tuple[str, str]:
    """The (student, teacher) AT and FitNet layers: `features[19 // d]` (docs/methods.md).

    The index is into the *full* 19-module network, as the public code's `middle_index`, for
    teacher and student alike (features.9 for the 4.1x student), not into a truncated
    student's shorter list. A MobileNetV2 with fewer blocks per stage takes the end of the
    stage that holds the teacher's layer (same resolution). Other families: set the layers.
    """
    from edgekd.models.mobilenetv2_cifar import FULL_STAGE_PATHS

    full = tuple(f"body.{p}" for p in FULL_STAGE_PATHS)
    index = FULL_DEPTH // at_divisor(removed)
    s_paths, s_layout = stage_outputs(student)
    t_paths, _ = stage_outputs(teacher)
    fix = ("set distill.at_layer=STUDENT_PATH:TEACHER_PATH, layers of equal spatial size "
           f"(student stage outputs: {', '.join(s_paths) or 'none declared'})")
    # The teacher: the full network or a truncated one (an auxiliary) that reaches the layer.
    teacher_ok = bool(t_paths) and t_paths == full[: len(t_paths)] \
        and index < len(_features(teacher))
    if s_layout != "mbv2" or not teacher_ok:
        raise EdgeKDError(
            "no automatic AT layer for this student and teacher (with an auxiliary teacher, "
            f"distill.aux_teaches=warmup keeps the big one for stage 2): {fix}")
    teacher_layer = f"body.features.{index}"
    if s_paths == full[: len(s_paths)]:  # full depth: truncated or narrower
        if index >= len(_features(student)):
            raise EdgeKDError(f"the automatic AT layer features.{index} is past this student's "
                              f"{len(_features(student))} feature modules: {fix}")
        return teacher_layer, teacher_layer
    stage = next(k for k, p in enumerate(FULL_STAGE_PATHS) if int(p.split(".")[1]) >= index)
    if stage >= len(s_paths):
        raise EdgeKDError(f"this student has no stage {stage + 1} for the AT layer: {fix}")
    return s_paths[stage], teacher_layer


def penultimate(model: nn.Module) -> str:
    """The input of the last Linear layer: the pooled features the classifier sees."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise EdgeKDError(f"{type(model).__name__} has no Linear classifier for PKT")
    return f"{linears[-1]}:in"


def build_terms(methods: list[str], cfg, student: nn.Module, teacher: nn.Module,
                input_size: int) -> tuple[list[tuple[float, LossTerm]], float]:
    """The weighted loss terms of a method, and the weight of the task (cross-entropy) loss."""
    d = cfg.distill
    terms: list[tuple[float, LossTerm]] = []
    task_weight = 1.0
    removed = getattr(getattr(student, "body", None), "removed", None)
    if "kd" in methods:
        terms.append((cfg.kd.alpha, KDLoss(cfg.kd.temperature)))
        task_weight = 1.0 - cfg.kd.alpha
    if "at" in methods:
        s, t = (parse_pair(d.at_layer, "distill.at_layer") if d.at_layer
                else auto_at_layer(student, teacher, removed))
        get_module(student, s), get_module(teacher, t)
        terms.append((d.at_weight, ATLoss(s, t)))
    if "pkt" in methods:
        terms.append((d.pkt_weight, PKTLoss(penultimate(student), penultimate(teacher))))
    if "fitnet" in methods:
        if d.fitnet_layer:
            s, t = parse_pair(d.fitnet_layer, "distill.fitnet_layer")
        else:
            s, t = auto_at_layer(student, teacher, removed)  # the AT layer (docs/methods.md)
        shapes_s = _shapes(student, [s], input_size)[s]
        shapes_t = _shapes(teacher, [t], input_size)[t]
        terms.append((d.fitnet_weight, FitNetLoss(s, t, shapes_s[1], shapes_t[1])))
    return terms, task_weight
