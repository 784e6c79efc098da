"""Feature taps by module path (as torchdistill does): any model can be teacher or student.

    with FeatureTap(model, ["body.features.6"]) as tap:
        logits = model(x)
    fm = tap["body.features.6"]

A path may end in `:in` to take the module's input instead of its output (the penultimate
features are the input of the classifier).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
from torch import nn

from edgekd.errors import EdgeKDError


class LayerPathError(EdgeKDError):
    """A module path that does not exist in the model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (paths are the model's own)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at `path`; an unknown path raises with the nearest existing names."""
    model = unwrap(model)
    names = dict(model.named_modules())
    if path in names:
        return names[path]
    near = difflib.get_close_matches(path, list(names), n=4, cutoff=0.5)
    hint = f"nearest: {', '.join(near)}" if near else "see model.named_modules()"
    raise LayerPathError(f"layer {path!r} does not exist in {type(model).__name__} ({hint})")


class FeatureTap:
    """Forward hooks that record the outputs (or `:in` inputs) of modules by path."""

    def __init__(self, model: nn.Module, paths: Iterable[str]):
        self.model = model
        self.paths = list(dict.fromkeys(paths))
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []
        for p in self.paths:
            get_module(model, p.removesuffix(":in"))  # validate now, not at first forward

    def __enter__(self) -> FeatureTap:
        for p in self.paths:
            name, want_input = p.removesuffix(":in"), p.endswith(":in")
            module = get_module(self.model, name)
            self._handles.append(module.register_forward_hook(self._hook(p, want_input)))
        return self

    def _hook(self, key: str, want_input: bool):
        def hook(_module, inputs, output):
            self.features[key] = inputs[0] if want_input else output

        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __getitem__(self, path: str) -> torch.Tensor:
        return self.features[path]


class _Reached(Exception):
    """Raised by `forward_until`'s hook to stop a forward pass once the layer has run."""


def forward_until(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """The output of module `path` for input `x`, running `model` only as far as that module
    (a frozen teacher's later layers cost time and change nothing). Call under `no_grad`."""
    module = get_module(model, path)
    out: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        out["y"] = output
        raise _Reached

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if "y" not in out:
        raise LayerPathError(f"{path} did not run in {type(model).__name__}'s forward pass")
    return out["y"]
