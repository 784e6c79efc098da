"""CIFAR-10 through torchvision (downloaded once, or read from an existing copy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekd.data.cache import cache_dir
from edgekd.data.dataset import (
    Dataset,
    LoadRequest,
    Split,
    register_loader,
    resize_uint8,
    stratified_split,
    use_disk,
)
from edgekd.data.store import StoreWriter, open_or_build
from edgekd.errors import DataError

# The papers' teacher normalisation (docs/methods.md): kept so a paper teacher checkpoint fits.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def load_cifar10(
    data_dir: str | Path | None,
    input_size: int,
    val_fraction: float,
    split_seed: int,
    download: bool,
    storage: str = "auto",
) -> Dataset:
    """CIFAR-10 train (minus a stratified val split) and test, from `data_dir` or a download."""
    from torchvision.datasets import CIFAR10

    root = Path(data_dir) if data_dir else cache_dir("cifar10")
    try:
        train_ds = CIFAR10(str(root), train=True, download=False)
        test_ds = CIFAR10(str(root), train=False, download=False)
    except RuntimeError:
        if data_dir is not None or not download:
            raise DataError(
                f"CIFAR-10 not found in {root}: pass --data-dir pointing at the folder that "
                "holds cifar-10-batches-py (or use --dataset imagefolder:PATH)"
            ) from None
        try:
            train_ds = CIFAR10(str(root), train=True, download=True)
            test_ds = CIFAR10(str(root), train=False, download=True)
        except Exception as e:  # network errors come in many types (URLError, OSError, ...)
            raise DataError(
                f"CIFAR-10 is not in {root} and could not be downloaded ({type(e).__name__}): "
                "pass --data-dir pointing at an existing copy (the folder holding "
                "cifar-10-batches-py)"
            ) from None

    disk = use_disk(storage, (len(train_ds) + len(test_ds)) * 3 * input_size * input_size)

    def to_split(ds, name: str) -> Split:
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        labels = torch.tensor(ds.targets, dtype=torch.long)
        if not disk:
            return Split(resize_uint8(images, input_size), labels)
        # Resized a chunk at a time into an on-disk store: 50k images at 224 px are 7.5 GB.
        folder = cache_dir("cifar10-store", f"{name}-{input_size}")
        source = str(root.resolve())

        def build() -> None:
            w = StoreWriter(folder, len(images), (3, input_size, input_size), {"source": source})
            for a in range(w.done, len(images), 1024):
                w.write(a, resize_uint8(images[a : a + 1024], input_size).numpy())
            w.finish()

        return Split(open_or_build(folder, build, lambda s: s.manifest.get("source") == source), labels)

    full_train, test = to_split(train_ds, "train"), to_split(test_ds, "test")
    train_idx, val_idx = stratified_split(full_train.labels.numpy(), val_fraction, split_seed)
    return Dataset(
        name="cifar10",
        classes=list(train_ds.classes),
        train=full_train.subset(train_idx),
        val=full_train.subset(val_idx),
        test=test,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        hflip=True,
        source=f"torchvision CIFAR10 at {root}",
        extra={"split_seed": split_seed},
    )


def _load(r: LoadRequest) -> Dataset:
    return load_cifar10(r.data_dir, r.input_size, r.val_fraction, r.split_seed, r.download,
                        r.storage)


register_loader("cifar10", _load)
