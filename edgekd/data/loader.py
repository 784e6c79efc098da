"""Batches of training images on the device, from memory or from an on-disk store.

In memory (a uint8 tensor) the whole split moves to the device once and a batch is an index.
From an `ImageStore` a `torch.utils.data.DataLoader` reads each batch in worker processes
(`os.pread`, page cache) into pinned memory while the model trains on the previous one. Both
yield the batches of the index lists they are given, in that order, so the sample order and
the augmentation's random numbers do not depend on where the images live.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from edgekd.data.store import ImageStore


class _Rows(Dataset):
    """store[index batch] -> uint8 batch (read in a worker process)."""

    def __init__(self, store: ImageStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.store[batch]


class _Plan(Sampler):
    """The current epoch's index batches; set before each pass, so one DataLoader and its
    persistent workers serve every epoch (a worker start costs more than an epoch of a
    small set)."""

    def __init__(self):
        self.batches: Sequence[torch.Tensor] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def loader_workers() -> int:
    """Reader processes: reading is a memory copy from the page cache, so a few suffice and
    the cores stay with training."""
    return min(4, max(1, (os.cpu_count() or 2) // 2))


class BatchFeeder:
    """`feeder.epoch(index_batches)` yields uint8 (B, 3, H, W) batches on `device`."""

    def __init__(self, images: torch.Tensor | ImageStore, device: torch.device,
                 workers: int | None = None):
        self.device = device
        self.store = images if isinstance(images, ImageStore) else None
        self.images = None if self.store is not None else images.to(device)
        self.workers = loader_workers() if workers is None else workers
        self.plan = _Plan()
        self.loader = None
        if self.store is not None:
            self.loader = DataLoader(_Rows(self.store), sampler=self.plan, batch_size=None,
                                     num_workers=self.workers, persistent_workers=self.workers > 0,
                                     pin_memory=device.type == "cuda",
                                     prefetch_factor=4 if self.workers else None)

    def epoch(self, batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        if self.store is None:
            for idx in batches:
                yield self.images[idx.to(self.device)]
            return
        self.plan.batches = batches
        for x in self.loader:
            yield x.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the reader processes (they persist across epochs, not across stages)."""
        it = getattr(self.loader, "_iterator", None) if self.loader is not None else None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader = None
