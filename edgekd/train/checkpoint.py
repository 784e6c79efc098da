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

from edgekd.errors import ModelError
from edgekd.io import atomic_path
from edgekd.models.fit import check_fit, file_classes, replace_head
from edgekd.models.registry import Classifier, create_model
from edgekd.version import __version__

FORMAT = "edgekd.model"


def save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | Path, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; unreadable files become one-line ModelErrors."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{what} {p} not found: check the path")
    exported = p.suffix == ".pt2"
    if not exported and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            exported = any(n.endswith(("/archive_format", "serialized_exported_program.json"))
                           for n in z.namelist())
    if exported:
        # torch.export.load reads a PT2 archive's weights and constants with
        # torch.load(weights_only=False) and pickle.loads (torch 2.14; docs/data.md: Teachers).
        raise ModelError(
            f"{what} {p} is a torch.export program, refused: torch.export.load unpickles "
            "its weights and constants, so loading it could run code; save the model's "
            "state_dict and pass --teacher-arch and --teacher-norm")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        text = str(e)
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            # A pickled object other than tensors and plain containers: loading it would run
            # its code, which edgekd never does for a file (docs/data.md: Teachers).
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
            **({"resize_to": model.input_size} if getattr(model, "input_size", None) else {}),
            "edgekd_version": __version__,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            **meta,
        },
        path,
    )


def load_model(path: str | Path, arch: str | None = None, num_classes: int | None = None,
               what: str = "checkpoint", norm: tuple | None = None,
               new_head: bool = False) -> tuple[Classifier, dict]:
    """Load an edgekd checkpoint, or a bare state_dict when `arch` and `norm` (its input
    (mean, std)) are given.

    Raises ModelError when the file is another architecture or class count than required;
    with `new_head`, a class count that differs in the head alone gives the model a new,
    untrained head of `num_classes` (for fine-tuning).
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
        if num_classes is not None and meta["num_classes"] != num_classes and not new_head:
            raise ModelError(
                f"{what} {path} has {meta['num_classes']} classes but the data set has "
                f"{num_classes}: use a checkpoint trained on this data set, or fine-tune it "
                "(--teacher-finetune-epochs N)"
            )
        model = create_model(meta["arch"], meta["num_classes"], meta["mean"], meta["std"],
                             meta.get("resize_to"))
        _load_state(model, state, path, meta["arch"], what)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if arch is None or num_classes is None:
            raise ModelError(f"{what} {path} is a bare state_dict: say which architecture it is "
                             "(--teacher-arch)")
        if norm is None and {"mean", "std"} <= obj.keys():  # an edgekd model's own state_dict
            norm = (obj["mean"].flatten().tolist(), obj["std"].flatten().tolist())
        # A bare state_dict of the network alone (no normalisation buffers) fits `body`.
        body = {k[len("body."):]: v for k, v in obj.items() if k.startswith("body.")} or obj
        n = file_classes(body, arch, num_classes) if new_head else None
        check_fit(body, arch, n or num_classes, f"{what} {path}")
        if norm is None:
            raise ModelError(
                f"{what} {path} is a bare state_dict, which does not say how its inputs were "
                "normalised: pass --teacher-norm imagenet|cifar10|data|MEAN,STD (the mean/std "
                "it was trained with)")
        meta = {"arch": arch, "num_classes": n or num_classes}
        model = create_model(arch, n or num_classes, *norm)
        _load_state(model.body, body, path, arch, what)
    else:
        raise ModelError(f"{what} {path} is not a model checkpoint: pass a file saved by edgekd "
                         "or a state_dict (torch.save(model.state_dict(), ...))")
    if new_head and num_classes is not None and meta["num_classes"] != num_classes:
        replace_head(model.body, num_classes)
        meta = {**meta, "pretrained_classes": meta["num_classes"], "num_classes": num_classes}
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
