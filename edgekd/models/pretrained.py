"""Pretrained weights by name: `torchvision:ARCH.WEIGHTS` (torchvision's weights enums) and
`timm:ARCH.TAG` (timm's pretrained tags), with the input preprocessing they were trained with.

Weights come from the local caches (torch hub's `checkpoints/` folder, the Hugging Face hub
cache) and are downloaded into them when the machine is online. Both are read as data only:
torchvision's `.pth` files by torchvision's own builder (`torch.load` with weights_only, the
default of torch >= 2.6), timm's `.safetensors` by timm's loader, which also adapts the
weights to the model (a classifier of another class count is dropped and made anew), and a
timm `.bin` here with `torch.load(weights_only=True)`, whatever timm's version would do.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from edgekd.errors import ModelError
from edgekd.models.fit import replace_head
from edgekd.models.registry import TIMM, Classifier, close_names, timm_module

TORCHVISION = "torchvision:"


@dataclass(frozen=True)
class PretrainedInfo:
    """What the weights' own metadata says, before anything is loaded."""

    spec: str  # torchvision:resnet18.IMAGENET1K_V1 | timm:resnet18.a1_in1k
    arch: str  # the edgekd model name: resnet18 | timm:resnet18
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    num_classes: int  # of the pretrained head
    categories: tuple[str, ...] | None

    def to_dict(self) -> dict:
        return {"spec": self.spec, "arch": self.arch, "mean": list(self.mean), "std": list(self.std),
                "input_size": self.input_size, "num_classes": self.num_classes}


def is_pretrained_spec(spec: str | None) -> bool:
    """Whether `spec` names weights (library:ARCH.TAG) rather than a file."""
    if not spec or Path(spec).exists():
        return False
    for prefix in (TORCHVISION, TIMM):
        if spec.startswith(prefix) and "." in spec[len(prefix):]:
            return True
    return False


def _split(spec: str, prefix: str) -> tuple[str, str]:
    arch, _, tag = spec[len(prefix):].partition(".")
    if not arch or not tag:
        raise ModelError(f"pretrained weights {spec!r}: write {prefix}ARCH.TAG, e.g. "
                         f"{prefix}resnet18.{'IMAGENET1K_V1' if prefix == TORCHVISION else 'a1_in1k'}")
    return arch, tag


def _torchvision_weights(spec: str):
    arch, tag = _split(spec, TORCHVISION)
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        close = close_names(arch)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"{spec}: torchvision has no model {arch!r}{hint}; see "
                         "torchvision.models.list_models()") from None
    try:
        return arch, enum[tag] if tag != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ModelError(f"{spec}: {arch} has no weights {tag!r}; use one of "
                         f"{', '.join(w.name for w in enum)} (or DEFAULT)") from None


def _timm_cfg(spec: str):
    timm = timm_module()
    arch, tag = _split(spec, TIMM)
    try:
        cfg = timm.get_pretrained_cfg(f"{arch}.{tag}")
    except RuntimeError:  # an invalid tag of a known architecture
        cfg = None
    if cfg is None or cfg.tag != tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if tags:
            raise ModelError(f"{spec}: timm has no tag {tag!r} for {arch}; use one of "
                             f"{', '.join(TIMM + t for t in tags[:6])}")
        close = close_names(TIMM + arch)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"{spec}: timm has no pretrained model {arch!r}{hint}; see "
                         "timm.list_pretrained()")
    return arch, cfg


def pretrained_info(spec: str) -> PretrainedInfo:
    """The metadata of named weights (no download): architecture, preprocessing, classes."""
    if spec.startswith(TORCHVISION):
        arch, weights = _torchvision_weights(spec)
        t = weights.transforms()
        categories = tuple(weights.meta.get("categories") or ()) or None
        return PretrainedInfo(spec, arch, tuple(t.mean), tuple(t.std), int(t.crop_size[0]),
                              len(categories) if categories else 1000, categories)
    arch, cfg = _timm_cfg(spec)
    return PretrainedInfo(spec, TIMM + arch, tuple(cfg.mean), tuple(cfg.std),
                          int(cfg.input_size[-1]), int(cfg.num_classes or 1000), None)


def weights_id(spec: str) -> str:
    """What names the weights' bytes: torchvision's URL (its file name holds a sha256 prefix),
    timm's hub repository and tag."""
    if spec.startswith(TORCHVISION):
        return _torchvision_weights(spec)[1].url
    arch, cfg = _timm_cfg(spec)
    return f"{cfg.hf_hub_id or cfg.url}:{cfg.tag}"


def torch_hub_cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline(spec: str, cache: Path, e: Exception) -> ModelError:
    return ModelError(f"weights {spec} are not in {cache} and could not be downloaded "
                      f"({type(e).__name__}): copy them there from an online machine, or pass "
                      "a checkpoint file")


def load_pretrained(spec: str, num_classes: int | None = None) -> tuple[Classifier, PretrainedInfo]:
    """The named weights as a model normalising with their own mean/std. `num_classes` other
    than the weights' own gives a new, untrained classifier head (to be fine-tuned)."""
    info = pretrained_info(spec)
    n = num_classes or info.num_classes
    if spec.startswith(TORCHVISION):
        arch, weights = _torchvision_weights(spec)
        cache = torch_hub_cache()
        if not (cache / os.path.basename(weights.url)).is_file():
            try:  # into the cache torchvision reads from (check_hash: the name's sha256 prefix)
                torch.hub.load_state_dict_from_url(weights.url, model_dir=str(cache), map_location="cpu",
                                                   progress=True, check_hash=True, weights_only=True)
            except (OSError, RuntimeError) as e:  # URLError is an OSError
                raise _offline(spec, cache, e) from None
        try:
            # torchvision's own builder: weights imply settings (inception's transform_input)
            body = torchvision.models.get_model(arch, weights=weights)
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
            raise ModelError(f"weights {spec} in {cache} are unreadable ({type(e).__name__}): delete "
                             f"{os.path.basename(weights.url)} there so it is downloaded again") from None
        _no_aux_heads(body)
        if n != info.num_classes:
            replace_head(body, n)
        return Classifier(body, info.mean, info.std), info
    arch, cfg = _timm_cfg(spec)
    path = _hf_file(spec, cfg.hf_hub_id)
    timm = timm_module()
    try:
        if path.suffix == ".safetensors":  # data only; timm adapts it (a new head for n classes)
            body = timm.create_model(f"{arch}.{cfg.tag}", pretrained=True, num_classes=n,
                                     pretrained_cfg_overlay={"file": str(path)})
        else:  # a pickle: read here with weights_only=True, whatever timm's version does
            body = timm.create_model(f"{arch}.{cfg.tag}", pretrained=False, num_classes=info.num_classes)
            body.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            if n != info.num_classes:
                replace_head(body, n)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise ModelError(f"weights {spec} ({path}) do not load ({type(e).__name__}: {first}): "
                         "delete the file so it is downloaded again") from None
    return Classifier(body, info.mean, info.std), info


def _no_aux_heads(body: torch.nn.Module) -> None:
    """Inception-style auxiliary classifiers off: in training mode they make the network
    return a tuple, and distillation uses the main head alone."""
    if getattr(body, "aux_logits", False):
        body.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(body, name):
                setattr(body, name, None)


def _hf_file(spec: str, repo: str | None) -> Path:
    """The weights file of a timm tag: from the Hugging Face cache, else downloaded."""
    from huggingface_hub import hf_hub_download

    if not repo:
        raise ModelError(f"{spec}: these timm weights are not on the Hugging Face hub; pass a "
                         "state_dict file with --teacher-arch instead")
    last: Exception | None = None
    for local_only in (True, False):
        for name in ("model.safetensors", "pytorch_model.bin"):
            try:
                return Path(hf_hub_download(repo, name, local_files_only=local_only))
            except Exception as e:  # not cached / offline / no such file: try the next way
                last = e
    raise _offline(spec, hf_cache() / f"models--{repo.replace('/', '--')}", last) from None
