"""Does a state_dict fit an architecture, and if not, which one does it fit best?

Candidate networks are built on the meta device (shapes, no memory), so comparing a file
against every built-in and torchvision architecture takes seconds and only happens when a
load has already failed.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from edgekd.errors import ModelError
from edgekd.models.registry import _torchvision_names, create_body, is_timm, list_models


@dataclass(frozen=True)
class Fit:
    arch: str
    matched: int  # keys present in both with the same shape
    missing: list[str]  # the architecture's keys the file lacks
    unexpected: list[str]  # keys in the file the architecture lacks
    mismatched: list[tuple[str, tuple, tuple]]  # (key, shape in file, shape in architecture)

    @property
    def score(self) -> float:
        total = self.matched + len(self.missing) + len(self.unexpected) + len(self.mismatched)
        return self.matched / max(1, total)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        if self.mismatched:
            k, a, b = self.mismatched[0]
            more = f" and {len(self.mismatched) - 1} more" if len(self.mismatched) > 1 else ""
            return f"size mismatch at {k}: {list(a)} in the file, {list(b)} in {self.arch}{more}"
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys (e.g. {self.missing[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys (e.g. {self.unexpected[0]})")
        return ", ".join(parts) or "fits"


def body_shapes(arch: str, num_classes: int) -> dict[str, tuple]:
    """Parameter shapes of `arch`'s body, built once per process on the meta device."""
    return dict(_body_shapes(arch, num_classes))


@functools.lru_cache(maxsize=512)
def _body_shapes(arch: str, num_classes: int) -> tuple[tuple[str, tuple], ...]:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        body = create_body(arch, num_classes)
    return tuple((k, tuple(v.shape)) for k, v in body.state_dict().items())


def fit(state: dict, arch: str, num_classes: int) -> Fit:
    """How the body `state` (no `body.` prefix) fits `arch` with `num_classes` outputs."""
    want = body_shapes(arch, num_classes)
    have = {k: tuple(v.shape) for k, v in state.items()}
    return Fit(
        arch,
        matched=sum(1 for k in want if k in have and have[k] == want[k]),
        missing=[k for k in want if k not in have],
        unexpected=[k for k in have if k not in want],
        mismatched=[(k, have[k], want[k]) for k in want if k in have and have[k] != want[k]],
    )


def head_keys(arch: str, num_classes: int) -> set[str]:
    """State keys of the classifier head: the parameters whose first dimension is the class
    count in the last layers (Linear or 1x1 convolution)."""
    shapes = list(body_shapes(arch, num_classes).items())
    keys: set[str] = set()
    for k, shape in reversed(shapes):
        if shape and shape[0] == num_classes:
            keys.add(k)
        elif keys:
            break
    return keys


def file_classes(state: dict, arch: str, num_classes: int) -> int | None:
    """The class count of `state` when it differs from `num_classes` in the head alone."""
    f = fit(state, arch, num_classes)
    heads = head_keys(arch, num_classes)
    if f.missing or f.unexpected or not f.mismatched or {k for k, _, _ in f.mismatched} - heads:
        return None
    counts = {a[0] for _, a, _ in f.mismatched}
    return counts.pop() if len(counts) == 1 else None


def nearest(state: dict, arch: str, num_classes: int) -> Fit | None:
    """The known architecture (built-in or torchvision; timm names of the same family) the
    state fits best, other than `arch`, if it fits at least half of its keys."""
    if is_timm(arch):
        from edgekd.models.registry import TIMM, timm_module

        family = arch[len(TIMM):].split("_")[0].rstrip("0123456789")
        pool = [TIMM + n for n in timm_module().list_models(f"{family}*")][:60]
    else:
        pool = [*list_models(), *sorted(_torchvision_names())]
    best = None
    for name in pool:
        if name == arch:
            continue
        try:
            f = fit(state, name, num_classes)
        except Exception:  # some networks cannot be built on the meta device (regnets)
            continue
        if best is None or f.score > best.score:
            best = f
        if f.exact:  # nothing fits better: the torchvision networks need not be built
            break
    return best if best is not None and best.score >= 0.5 else None


def check_fit(state: dict, arch: str, num_classes: int, what: str) -> None:
    """Raise one ModelError line saying why `state` does not fit, and what it does fit."""
    f = fit(state, arch, num_classes)
    if f.exact:
        return
    n = file_classes(state, arch, num_classes)
    if n is not None:
        raise ModelError(
            f"{what} has {n} classes, the data set {num_classes}: add "
            "--teacher-finetune-epochs N to fine-tune a new head on this data, or pass a "
            "model trained on this data set")
    near = nearest(state, arch, num_classes)
    if near is not None and near.exact:
        hint = f"it is a {near.arch}: pass --teacher-arch {near.arch}"
    elif near is not None:
        hint = f"nearest is {near.arch} ({near.score:.0%} of keys fit: {near.describe()})"
    else:
        hint = "no known architecture fits it: pass the architecture it was saved from"
    raise ModelError(f"{what} does not fit {arch} ({f.describe()}); {hint}")


def replace_head(body: nn.Module, num_classes: int) -> None:
    """Give a network a new, untrained classifier for `num_classes` (timm: its own method;
    otherwise the last Linear layer)."""
    if hasattr(body, "reset_classifier"):
        body.reset_classifier(num_classes)
        return
    last = None
    for name, m in body.named_modules():
        if isinstance(m, nn.Linear):
            last = name, m
    if last is None:
        raise ModelError(f"{type(body).__name__} has no Linear classifier to replace: pass a "
                         "teacher trained on this data set")
    name, m = last
    parent = body.get_submodule(name.rpartition(".")[0]) if "." in name else body
    setattr(parent, name.rpartition(".")[2],
            nn.Linear(m.in_features, num_classes, bias=m.bias is not None))
