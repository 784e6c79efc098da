"""A teacher's soft labels recorded once per augmented view, then read instead of running it
(in the style of FKD, Shen & Xing, ECCV 2022).

A distillation step costs one student forward and backward plus one teacher forward. For a
student 10-30x cheaper than its teacher the teacher's forward is most of the step, and it is
the same in every run that sees the same views: the methods of an ablation, a run resumed or
repeated. The views are reproducible: the engine draws each epoch's order, crops and flips from
a generator seeded by (seed, epoch) (edgekd.train.engine.epoch_batches). So the cache replays
those draws, runs the teacher once per view in inference mode at a large batch, and keeps its
logits per (epoch, training index); training then looks them up by index.

What a cache is valid for is its key: the teacher's weights, the data, the augmentation, the
seed, the batch size (it groups the draws), the teacher's precision and, when the teacher sees
overlaid images, the IG maps and overlay settings. The key names the folder, so a run whose
teacher, data, augmentation or seed changed gets a new cache and never reads an old one; a
manifest whose key differs from its folder's is refused. Every epoch is a file of its own
with its sha256 in the manifest: an interrupted build resumes at the first missing epoch, and
a file that fails its checksum is recomputed.

Storage: the top-k logits per view as float16 (k = distill.soft_label_topk, default 10: every
class of a 10-class problem, so exact there), with their class indices and, for more classes
than k, the mean of the remaining logits, which fills the other classes on reading (FKD keeps
top-k probabilities the same way). 45,000 views x 10 classes x 30 epochs is 27 MB.

Only logits are cached: terms that compare feature maps (at, fitnet, pkt) need the live
teacher and are refused with soft_labels=cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.data.loader import BatchFeeder
from edgekd.errors import EdgeKDError
from edgekd.io import atomic_path, folder_lock, sha256_file, sha256_json, write_json
from edgekd.train.engine import epoch_batches
from edgekd.train.precision import autocast

FORMAT = 1
MANIFEST = "manifest.json"


class SoftLabelError(EdgeKDError):
    """A soft-label cache that cannot be used."""


@dataclass(frozen=True)
class ViewReplay:
    """How the training loop makes each epoch's views: the same seed, batch grouping and
    transform calls (the transform returns the teacher's view, or `(student, teacher)`)."""

    seed: int
    batch_size: int
    transform: Callable


def cache_folder(root: str | Path, key: dict) -> Path:
    return Path(root) / sha256_json({"format": FORMAT, **key})[:16]


class SoftLabelCache:
    """The recorded teacher logits of one key: build missing epochs, read any of them."""

    def __init__(self, root: str | Path, key: dict):
        # as the manifest will read it back: JSON has lists, not tuples (a crop's scale range)
        self.key = json.loads(json.dumps({"format": FORMAT, **key}))
        self.folder = cache_folder(root, key)

    # ---- manifest ---------------------------------------------------------------------
    def manifest(self) -> dict:
        path = self.folder / MANIFEST
        if not path.exists():
            return {"key": self.key, "epochs": {}}
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SoftLabelError(f"{path} is unreadable ({e}): delete {self.folder} to rebuild it") from None
        if doc.get("key") != self.key:
            raise SoftLabelError(f"{self.folder} holds soft labels of another teacher, data or "
                                 f"augmentation than its name says: delete it to rebuild")
        return doc

    def recorded(self) -> list[int]:
        return sorted(int(e) for e in self.manifest()["epochs"])

    def _file(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:04d}.npz"

    def _valid(self, doc: dict, epoch: int) -> bool:
        entry = doc["epochs"].get(str(epoch))
        path = self._file(epoch)
        return entry is not None and path.exists() and sha256_file(path) == entry["sha256"]

    # ---- build ------------------------------------------------------------------------
    @torch.no_grad()
    def build(self, teacher: nn.Module, images, epochs: int, replay: ViewReplay, device: torch.device,
              *, amp_dtype: torch.dtype | None = None, channels_last: bool = False, topk: int = 10,
              batch_size: int = 256, progress: Callable[[int, int], None] | None = None) -> list[int]:
        """Record epochs 1..`epochs` that are missing or fail their checksum; returns the
        epochs computed. `images`: the uint8 training images (tensor or on-disk store)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.folder):
            doc = self.manifest()
            todo = [e for e in range(1, epochs + 1) if not self._valid(doc, e)]
            if not todo:
                return []
            teacher.eval()
            n = len(images)
            feeder = BatchFeeder(images, device)
            try:
                for done, epoch in enumerate(todo):
                    values, index, rest = self._record_epoch(
                        teacher, feeder, n, epoch, replay, device, amp_dtype, channels_last, topk,
                        batch_size)
                    path = self._file(epoch)
                    with atomic_path(path) as tmp, open(tmp, "wb") as f:
                        np.savez(f, values=values, index=index, rest=rest)
                    doc["epochs"][str(epoch)] = {"sha256": sha256_file(path)}
                    write_json(self.folder / MANIFEST, doc)  # after the file: a crash loses one epoch
                    if progress:
                        progress(done + 1, len(todo))
            finally:
                feeder.close()
            return todo

    def _record_epoch(self, teacher, feeder, n, epoch, replay, device, amp_dtype, channels_last,
                      topk, batch_size):
        gen, batches = epoch_batches(replay.seed, epoch, n, replay.batch_size)
        values = index = rest = None
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []

        def run(pending):
            nonlocal values, index, rest
            x = torch.cat([v for v, _ in pending])
            idx = torch.cat([i for _, i in pending])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                out = teacher(x).float().cpu()
            classes = out.shape[1]
            k = min(topk, classes)
            if values is None:  # views not drawn this epoch (none with full batches) stay NaN
                values = torch.full((n, k), float("nan"), dtype=torch.float16)
                index = torch.zeros((n, k), dtype=torch.int32) if k < classes else None
                rest = torch.zeros(n, dtype=torch.float16) if k < classes else None
            if k < classes:
                top, ind = out.topk(k, dim=1)
                values[idx] = top.half()
                index[idx] = ind.int()
                rest[idx] = ((out.sum(1) - top.sum(1)) / (classes - k)).half()
            else:
                values[idx] = out.half()

        # Views come in training batches (the draws' grouping); the teacher runs over larger ones.
        for idx, images in zip(batches, feeder.epoch(batches), strict=True):
            x = replay.transform(images, idx, gen)  # the same draws, in the same order
            pending.append((x[1] if isinstance(x, tuple) else x, idx))
            if sum(len(i) for _, i in pending) >= batch_size:
                run(pending)
                pending = []
        if pending:
            run(pending)
        empty_i, empty_r = np.zeros((0, 0), np.int32), np.zeros(0, np.float16)
        return (values.numpy(), empty_i if index is None else index.numpy(),
                empty_r if rest is None else rest.numpy())

    # ---- read -------------------------------------------------------------------------
    def load(self, epoch: int, classes: int) -> torch.Tensor:
        """The (n, classes) float32 logits of an epoch (views not drawn that epoch: NaN)."""
        doc = self.manifest()
        if not self._valid(doc, epoch):
            raise SoftLabelError(f"soft labels of epoch {epoch} are missing or corrupt in "
                                 f"{self.folder}: rerun with --resume to rebuild them")
        with np.load(self._file(epoch), allow_pickle=False) as z:
            values = torch.from_numpy(z["values"]).float()
            index, rest = z["index"], z["rest"]
            if index.size == 0:
                return values
            full = torch.from_numpy(rest).float()[:, None].repeat(1, classes)
            full.scatter_(1, torch.from_numpy(index).long(), values)
            return full


class CachedTeacher:
    """The teacher's logits of the current epoch's views, looked up by training index."""

    def __init__(self, cache: SoftLabelCache, classes: int, device: torch.device):
        self.cache, self.classes, self.device = cache, classes, device
        self.epoch: int | None = None
        self._logits: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._logits = self.cache.load(epoch, self.classes).to(self.device)
            self.epoch = epoch

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self._logits is None:
            raise SoftLabelError("cached soft labels read before the epoch was set")
        return self._logits[idx.to(self._logits.device)]
