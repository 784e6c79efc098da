"""Decoded images on disk: one raw uint8 file (N x 3 x H x W, C order) plus a manifest.

`ImageStore` reads rows with `os.preadv` (`edgekd.io.PreadFile`) into fresh buffers, so a
process holds only the batches it is using: the file's pages live in the kernel's page cache
(shared, reclaimable, warm after the first epoch), not in the process's resident set, and peak
RSS does not grow with the data set. A memory map would read as fast but count every page it touched as resident.

`StoreWriter` fills a store row by row and can be resumed: rows are flushed before the count
of finished rows is recorded, and the manifest is written (atomically) only when all are in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgekd.errors import DataError
from edgekd.io import PreadFile, folder_lock, write_json

FORMAT = "edgekd.image-store"
RAW, MANIFEST, PROGRESS = "images.u8", "manifest.json", "progress.json"


class ImageStore:
    """Read-only uint8 images (N, 3, H, W) from a store folder; indexing returns tensors.

    Supports what stages do with an image tensor: `len`, `.shape`, `store[i]`, `store[a:b]`,
    `store[indices]` (a tensor, array or list of ints) and `subset(indices)` (a view, no copy).
    """

    def __init__(self, folder: str | os.PathLike, rows: np.ndarray | None = None):
        self.folder = Path(folder)
        m = json.loads((self.folder / MANIFEST).read_text())
        if m.get("format") != FORMAT:
            raise DataError(f"{self.folder} is not an image store: delete it to rebuild it")
        self.manifest = m
        self._shape = tuple(m["shape"])  # of the whole file
        self._row = int(np.prod(self._shape[1:]))
        self._rows = rows  # None: all rows in file order; else the rows of this view
        self._raw = PreadFile(self.folder / RAW)
        size = (self.folder / RAW).stat().st_size
        if size != self._shape[0] * self._row:
            raise DataError(f"{self.folder / RAW} is truncated ({size} bytes): delete "
                            f"{self.folder} to rebuild it")

    def __len__(self) -> int:
        return self._shape[0] if self._rows is None else len(self._rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._shape[1:])

    @property
    def digest(self) -> str:
        """sha256 of the pixels of this view in order, as of a tensor holding them (the whole
        file's is in the manifest; a view's is read once in chunks and kept)."""
        if self._rows is None:
            return self.manifest["sha256"]
        if getattr(self, "_digest", None) is None:
            h = hashlib.sha256()
            for a in range(0, len(self), 1024):
                h.update(self[a : a + 1024].numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def _file_rows(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            sel = np.arange(n)[key]
        else:
            arr = np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key)
            if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer) and arr.size:
                raise TypeError("an image store is indexed by integers or slices")
            sel = arr.astype(np.int64).reshape(-1)
            sel = np.where(sel < 0, sel + n, sel)
        if len(sel) and (sel.min() < 0 or sel.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        return sel if self._rows is None else self._rows[sel]

    @staticmethod
    def _scalar(key) -> bool:
        return isinstance(key, int | np.integer) or (isinstance(key, torch.Tensor | np.ndarray) and key.ndim == 0)

    def __getitem__(self, key) -> torch.Tensor:
        rows = self._file_rows(key)
        out = np.empty((len(rows), *self._shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(rows), self._row)
        i = 0
        while i < len(rows):  # coalesce runs of consecutive rows into one read
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            if not self._raw.read_into(memoryview(flat[i:j]).cast("B"), int(rows[i]) * self._row):
                raise DataError(f"{self.folder / RAW} is truncated: delete {self.folder} to rebuild it")
            i = j
        t = torch.from_numpy(out)
        return t[0] if self._scalar(key) else t

    def subset(self, indices) -> ImageStore:
        view = ImageStore.__new__(ImageStore)
        view.__dict__.update(self.__dict__)  # the same file, read through the same descriptor
        view._rows = self._file_rows(indices)
        view._digest = None
        return view

    def numpy(self) -> np.ndarray:
        return self[:].numpy()

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)


class StoreWriter:
    """Fill a store of `n` rows of `shape` in `folder`, in order, resumably."""

    def __init__(self, folder: str | os.PathLike, n: int, shape: tuple[int, int, int], meta: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n, self.shape, self.meta = n, tuple(shape), meta
        self.row = int(np.prod(shape))
        raw = self.folder / RAW
        prog = self.folder / PROGRESS
        # A store being (re)built is never complete: its old manifest goes first.
        (self.folder / MANIFEST).unlink(missing_ok=True)
        self.done = 0
        if prog.is_file() and raw.is_file():
            p = json.loads(prog.read_text())
            if (p.get("n") == n and p.get("shape") == list(shape) and p.get("meta") == meta
                    and raw.stat().st_size >= p["done"] * self.row):
                self.done = int(p["done"])
        self._f = open(raw, "r+b" if self.done else "wb")
        self._f.truncate(n * self.row)

    def write(self, start: int, images: np.ndarray) -> None:
        """Rows [start, start + len(images)); recorded as done once on disk."""
        if start != self.done:
            raise ValueError("rows are written in order")
        self._f.seek(start * self.row)
        self._f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done = start + len(images)
        write_json(self.folder / PROGRESS, {"n": self.n, "shape": list(self.shape), "meta": self.meta,
                                            "done": self.done})

    def finish(self) -> ImageStore:
        self._f.close()
        h = hashlib.sha256()
        with open(self.folder / RAW, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        write_json(self.folder / MANIFEST, {"format": FORMAT, "version": 1,
                                            "shape": [self.n, *self.shape], "sha256": h.hexdigest(),
                                            **self.meta})
        (self.folder / PROGRESS).unlink(missing_ok=True)
        return ImageStore(self.folder)


def open_or_build(folder: str | os.PathLike, build: Callable[[], object],
                  valid: Callable[[ImageStore], bool] = lambda store: True) -> ImageStore:
    """The complete store in `folder`, made by `build()` when there is none (or it is not
    `valid`): one process at a time builds (torchrun ranks and parallel runs share the
    cache); the others wait for the lock and then find it complete."""
    store = open_store(folder)
    if store is None or not valid(store):
        with folder_lock(folder):
            store = open_store(folder)
            if store is None or not valid(store):
                build()
                store = ImageStore(folder)
    return store


def open_store(folder: str | os.PathLike) -> ImageStore | None:
    """The complete store in `folder`, or None when there is none (or only a partial one)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return None
    try:
        return ImageStore(folder)
    except (DataError, ValueError, KeyError, OSError):
        return None
