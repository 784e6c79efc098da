"""The `Dataset` every stage consumes, and `load_dataset(spec)` that builds it.

Images are uint8 (N, 3, H, W) at the model's input size, held either in memory (a tensor:
small sets such as digits and CIFAR-10 at 32 px, sliced without a DataLoader) or on disk (an
`ImageStore`, decoded once and read per batch through a DataLoader: sets larger than memory).
Both index the same way; `storage="auto"` picks memory up to `MEMORY_LIMIT` bytes of pixels.
Augmentation runs batched on tensors (see `edgekd.data.augment`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from edgekd.data.store import ImageStore
from edgekd.errors import DataError

DATASETS = ("digits", "cifar10", "imagefolder:PATH")
STORAGES = ("auto", "memory", "disk")
MEMORY_LIMIT = 2 << 30  # bytes of decoded pixels (all splits) kept in memory by `auto`


def use_disk(storage: str, nbytes: int) -> bool:
    """Whether a data set of `nbytes` decoded pixels is read from disk."""
    if storage not in STORAGES:
        raise DataError(f"data storage {storage!r}: use one of {', '.join(STORAGES)}")
    return storage == "disk" or (storage == "auto" and nbytes > MEMORY_LIMIT)


@dataclass
class Split:
    images: torch.Tensor | ImageStore  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> Split:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if isinstance(self.images, ImageStore):
            return Split(self.images.subset(idx), self.labels[idx])
        return Split(self.images[idx], self.labels[idx])


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hflip: bool  # whether horizontal flips preserve the label (not for digits)
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> int:
        return int(self.train.images.shape[-1])

    def fingerprint(self) -> str:
        """A hash of what a model trained on this data depends on: classes, sizes, pixels."""
        h = hashlib.sha256()
        h.update(repr((self.name, self.classes, self.mean, self.std)).encode())
        for split in (self.train, self.val, self.test):
            h.update(repr(tuple(split.images.shape)).encode())
            h.update(pixel_digest(split.images).encode())
            h.update(split.labels.numpy().tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "classes": self.classes,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "hflip": self.hflip,
            "storage": "disk" if isinstance(self.train.images, ImageStore) else "memory",
            "fingerprint": self.fingerprint(),
            **self.extra,
        }


@dataclass(frozen=True)
class LoadRequest:
    """What `load_dataset` hands a registered loader: the spec's path (imagefolder) and the
    load settings, each loader taking the ones it uses."""

    path: str | None
    input_size: int
    data_dir: str | Path | None
    val_fraction: float
    split_seed: int
    download: bool
    storage: str
    skip_bad_images: bool
    progress: Callable | None


_LOADERS: dict[str, Callable[[LoadRequest], Dataset]] = {}


def register_loader(kind: str, load: Callable[[LoadRequest], Dataset]) -> None:
    """Make `load_dataset` build data sets of `kind` (a name parse_dataset_spec returns) with
    `load`. The loader modules (digits, cifar10, imagefolder) call this when imported, and
    edgekd.data imports them; this module imports none of them."""
    _LOADERS[kind] = load


def pixel_digest(images: torch.Tensor | ImageStore) -> str:
    """sha256 of uint8 pixels in order: the same for a tensor and a store of the same images."""
    if isinstance(images, ImageStore):
        return images.digest
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def parse_dataset_spec(spec: str) -> tuple[str, str | None]:
    """'digits' | 'cifar10' | 'imagefolder:PATH' -> (kind, path)."""
    if spec in ("digits", "cifar10"):
        return spec, None
    if spec.startswith("imagefolder:") and len(spec) > len("imagefolder:"):
        return "imagefolder", spec[len("imagefolder:") :]
    raise DataError(f"unknown dataset {spec!r}: use one of {', '.join(DATASETS)}")


def load_dataset(
    spec: str,
    input_size: int = 32,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = True,
    storage: str = "auto",
    skip_bad_images: bool = False,
    progress=None,
) -> Dataset:
    """Load a data set by spec, resized to `input_size`, with deterministic stratified splits,
    in memory or on disk (`storage`: auto | memory | disk). `progress(done, total, what)` is
    called while images are decoded."""
    use_disk(storage, 0)  # checks the name
    kind, path = parse_dataset_spec(spec)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val fraction must be in [0, 1), got {val_fraction}")
    load = _LOADERS.get(kind)
    if load is None:
        raise DataError(f"no loader is registered for {kind!r} data sets: import edgekd.data "
                        "(it registers digits, cifar10 and imagefolder)")
    return load(LoadRequest(path, input_size, data_dir, val_fraction, split_seed, download,
                            storage, skip_bad_images, progress))


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with `fraction` of each class held out, deterministically."""
    idx = np.arange(len(labels))
    if fraction <= 0:
        return idx, idx[:0]
    keep, held = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(keep), np.sort(held)


def channel_stats(images: torch.Tensor | ImageStore) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and sd of uint8 images, in [0, 1] units, rounded for readability
    (summed in chunks: bounded memory for a store)."""
    s1 = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    for a in range(0, len(images), 512):
        x = images[a : a + 512].to(torch.float64) / 255.0
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    count = max(1, len(images) * images.shape[-1] * images.shape[-2])
    mean = s1 / count
    var = (s2 - count * mean * mean) / max(1, count - 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (N, C, H, W) batch to size x size (bilinear, antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = images.float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)
