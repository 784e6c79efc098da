"""Model checkpoints (weights + metadata) and resumable training state, saved atomically.

Everything is loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd import __version__
from edgekd.errors import ModelError
from edgekd.io import atomic_path
from edgekd.models.registry import Classifier, create_model

FORMAT = "edgekd.model"


def save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | Path, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; unreadable files become one-line ModelErrors."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{what} {p} not found: check the path")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        text = str(e)
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            # A pickled object other than tensors and plain containers: loading it would run
            # its code, which edgekd never does for a file (README: Checkpoints).
            raise ModelError(
                f"{what} {p} was refused: it holds a pickled {unsafe.group(1)} object, and loading "
                "it could run code; save only tensors (torch.save(model.state_dict(), ...))"
            ) from None
        first = text.strip().splitlines()[0][:120] if text.strip() else type(e).__name__
        raise ModelError(
            f"{what} {p} is unreadable (truncated or corrupt? {first}): re-create it"
        ) from None


def save_model(model: Classifier, path: str | Path, arch: str, classes: list[str], **meta) -> None:
    save(
        {
            "format": FORMAT,
            "version": 1,
            "arch": arch,
            "num_classes": len(classes),
            "classes": list(classes),
            "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(),
            "edgekd_version": __version__,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            **meta,
        },
        path,
    )


def load_model(path: str | Path, arch: str | None = None, num_classes: int | None = None,
               what: str = "checkpoint") -> tuple[Classifier, dict]:
    """Load an edgekd checkpoint (or a bare state_dict when `arch` is given).

    Raises ModelError when the file is another architecture or class count than required.
    """
    obj = load(path, what)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        state = obj["state_dict"]
        if arch is not None and meta["arch"] != arch:
            raise ModelError(
                f"{what} {path} holds a {meta['arch']}, not a {arch}: pass a matching checkpoint "
                f"or select arch {meta['arch']}"
            )
        if num_classes is not None and meta["num_classes"] != num_classes:
            raise ModelError(
                f"{what} {path} has {meta['num_classes']} classes but the data set has "
                f"{num_classes}: use a checkpoint trained on this data set (or train one)"
            )
        model = create_model(meta["arch"], meta["num_classes"], meta["mean"], meta["std"])
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if arch is None or num_classes is None:
            raise ModelError(f"{what} {path} is a bare state_dict: say which architecture it is")
        state, meta = obj, {"arch": arch, "num_classes": num_classes}
        model = create_model(arch, num_classes)
        # A bare state_dict of the network alone (no normalisation buffers) fits `body`.
        if not any(k.startswith("body.") for k in state):
            state = {f"body.{k}": v for k, v in state.items()}
            state.setdefault("mean", model.mean)
            state.setdefault("std", model.std)
    else:
        raise ModelError(f"{what} {path} is not a model checkpoint: pass a file saved by edgekd")
    _load_state(model, state, path, meta.get("arch", arch), what)
    return model, meta


def peek_arch(path: str | Path) -> str | None:
    """The architecture an edgekd checkpoint declares (None for a bare state_dict)."""
    obj = load(path, "checkpoint")
    return obj.get("arch") if isinstance(obj, dict) and obj.get("format") == FORMAT else None


def _load_state(model: nn.Module, state: dict, path, arch, what) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e)
        detail = "size mismatch" if "size mismatch" in msg else "missing/unexpected keys"
        raise ModelError(
            f"{what} {path} does not fit {arch} ({detail}): pass a checkpoint of that architecture"
        ) from None
