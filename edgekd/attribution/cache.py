"""The IG map cache: one memory-mapped `maps.npy` (N x H x W) plus `manifest.json`.

Map i belongs to training image i. The manifest records what produced the maps (teacher
weights sha256, data set fingerprint with a hash of the index order, IG settings, dtype,
shape, chunk size) and which chunks are complete, each with the sha256 of its bytes. A chunk
is recorded only after its bytes are flushed to disk, and the manifest is replaced atomically,
so a crash, a kill or a full disk never leaves a cache that passes as complete; readers
re-hash every chunk, so a truncated or damaged file is detected, never used.

Each map is stored relative to its own maximum (float16 in [0, 1], or uint8 in 0..255) with
its scale in `scales.npy` (float32), so neither dtype underflows on a teacher whose
attributions are tiny. The overlay only needs the relative map: a per-map scale cancels in
its power-and-min-max normalisation.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd.errors import EdgeKDError
from edgekd.io import PreadFile, write_json

FORMAT, VERSION = "edgekd.ig-cache", 1
MAPS, SCALES, MANIFEST = "maps.npy", "scales.npy", "manifest.json"
DTYPES = ("float16", "uint8")


class CacheError(EdgeKDError):
    """An IG cache that is missing, incomplete, truncated or corrupt."""


class StaleCacheError(CacheError):
    """An IG cache made by another teacher, data set or settings than requested."""


def dataset_identity(name: str, classes: list[str], images, labels: torch.Tensor) -> dict:
    """Fingerprint of a split as the maps see it: size, classes, content and index order
    (`images`: a uint8 tensor or an on-disk store, read in chunks)."""
    digests = []
    for a in range(0, len(images), 1024):
        flat = images[a : a + 1024].reshape(-1, int(np.prod(images.shape[1:]))).numpy()
        digests += [hashlib.sha256(row.tobytes()).digest() for row in flat]
    return {
        "name": name,
        "classes": list(classes),
        "size": len(images),
        "image_shape": list(images.shape[1:]),
        "labels_sha256": hashlib.sha256(labels.numpy().astype(np.int64).tobytes()).hexdigest(),
        "content_sha256": hashlib.sha256(b"".join(sorted(digests))).hexdigest(),
        "order_sha256": hashlib.sha256(b"".join(digests)).hexdigest(),
    }


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's state_dict (names, dtypes, shapes, values): the weights, no metadata."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Layout:
    n: int
    h: int
    w: int
    dtype: str
    chunk_size: int

    @property
    def chunks(self) -> int:
        return -(-self.n // self.chunk_size)

    def span(self, c: int) -> tuple[int, int]:
        return c * self.chunk_size, min(self.n, (c + 1) * self.chunk_size)


def _why_stale(old: dict, new: dict) -> str:
    """One phrase naming what differs between a cache's identity and the requested one."""
    if old.get("teacher_sha256") != new["teacher_sha256"]:
        return (f"of another teacher (weights sha256 {str(old.get('teacher_sha256'))[:12]} -> "
                f"{new['teacher_sha256'][:12]})")
    a, b = old.get("dataset") or {}, new["dataset"]
    if a != b:
        if a.get("content_sha256") == b["content_sha256"] and a.get("order_sha256") != b["order_sha256"]:
            return "of the same images in another index order (map i would not belong to image i)"
        diff = [k for k in ("name", "size", "classes", "image_shape") if a.get(k) != b.get(k)]
        what = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:2]) or "other images or labels"
        return f"of another data set ({what})"
    keys = ("settings", "dtype", "shape", "chunk_size")
    diff = []
    for k in keys:
        x, y = old.get(k), new[k]
        if isinstance(y, dict) and isinstance(x, dict):
            diff += [f"{s}: {x.get(s)!r} -> {y.get(s)!r}" for s in sorted(set(x) | set(y)) if x.get(s) != y.get(s)]
        elif x != y:
            diff.append(f"{k}: {x!r} -> {y!r}")
    return f"made with other settings ({'; '.join(diff[:3])})"


class MapRows:
    """Relative maps read per batch with `os.pread` from maps.npy: `rows[idx]` -> float16
    (B, H, W) in [0, 1], like the in-memory tensor `MapCache.load(relative=True)` returns."""

    def __init__(self, path: Path):
        m = np.lib.format.open_memmap(path, mode="r")
        self.path, self.dtype, self.shape = path, m.dtype, tuple(m.shape)
        self.offset = int(m.offset)
        self.row = int(np.prod(self.shape[1:])) * m.dtype.itemsize
        self.device = torch.device("cpu")
        del m
        self._file = PreadFile(path)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        rows = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for k, r in enumerate(rows):
            if not self._file.read_into(memoryview(out[k]).cast("B"), self.offset + int(r) * self.row):
                raise CacheError(f"{self.path} is truncated: recompute the maps with `edgekd ig compute RUN_DIR`")
        t = torch.from_numpy(out)
        return t.to(torch.float16).div_(255) if self.dtype == np.uint8 else t


class MapCache:
    """A cache folder (`RUN/ig/`). Creating, resuming and checking it; reading the maps."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    # ---- reading -----------------------------------------------------------------------
    def manifest(self) -> dict | None:
        """The manifest, None when there is none; CacheError when it is unreadable."""
        f = self.folder / MANIFEST
        if not f.is_file():
            return None
        try:
            doc = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            raise CacheError(f"{f} is unreadable (truncated or corrupt?): recompute with "
                             "`edgekd ig compute RUN_DIR`") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise CacheError(f"{f} is not an edgekd IG manifest (format {FORMAT} v{VERSION}): "
                             "recompute with `edgekd ig compute RUN_DIR --force`")
        return doc

    @staticmethod
    def layout(doc: dict) -> Layout:
        n, h, w = doc["shape"]
        return Layout(n, h, w, doc["dtype"], doc["chunk_size"])

    @staticmethod
    def _files(lay: Layout) -> list[str]:
        return [MAPS, SCALES]

    def damage(self, doc: dict) -> str | None:
        """Why the data files cannot be trusted at all (missing, truncated, wrong header)."""
        lay = self.layout(doc)
        for name in self._files(lay):
            f = self.folder / name
            if not f.is_file():
                return f"{f} is missing"
            want = ((lay.n, lay.h, lay.w), np.dtype(lay.dtype)) if name == MAPS else ((lay.n,), np.dtype(np.float32))
            try:
                with open(f, "rb") as fh:
                    version = np.lib.format.read_magic(fh)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read is None:
                        raise ValueError(f"unsupported .npy version {version}")
                    shape, _fortran, dtype = read(fh)
                    header = fh.tell()
            except (ValueError, OSError, SyntaxError) as e:
                return f"{f} is unreadable ({(str(e).splitlines() or [type(e).__name__])[0][:80]})"
            if (tuple(shape), dtype) != want:
                return f"{f} holds {tuple(shape)} {dtype}, not {want[0]} {want[1]}"
            size, expected = f.stat().st_size, header + int(np.prod(shape)) * dtype.itemsize
            if size != expected:
                return f"{f} is truncated ({size:,} of {expected:,} bytes)"
        return None

    def _open(self, lay: Layout, mode: str):
        maps = np.lib.format.open_memmap(self.folder / MAPS, mode=mode)
        scales = np.lib.format.open_memmap(self.folder / SCALES, mode=mode)
        return maps, scales

    @staticmethod
    def _chunk_sha(maps, scales, a: int, b: int) -> str:
        h = hashlib.sha256(np.ascontiguousarray(maps[a:b]).tobytes())
        h.update(np.ascontiguousarray(scales[a:b]).tobytes())
        return h.hexdigest()

    def bad_chunks(self, doc: dict) -> list[int]:
        """Recorded chunks whose bytes no longer match their checksum."""
        lay = self.layout(doc)
        maps, scales = self._open(lay, "r")
        return [int(c) for c, digest in doc["chunks"].items()
                if self._chunk_sha(maps, scales, *lay.span(int(c))) != digest]

    def verify(self, identity: dict | None = None, check: tuple[str, ...] = ()) -> dict:
        """The manifest of a complete, undamaged cache; CacheError (one line) otherwise.

        With `identity`, the fields named in `check` (all when empty) must match it.
        """
        doc = self.manifest()
        where = self.folder
        if doc is None:
            raise CacheError(f"{where} holds no IG maps: compute them with `edgekd ig compute RUN_DIR`")
        if identity is not None:
            keys = check or tuple(identity)
            if any(doc.get(k) != identity[k] for k in keys):
                raise StaleCacheError(f"{where} holds IG maps {_why_stale(doc, identity)}: "
                                      f"pass --force to recompute them (edgekd ig compute {where.parent} --force)")
        why = self.damage(doc)
        if why:
            raise CacheError(f"{why}: recompute the maps with `edgekd ig compute RUN_DIR`")
        lay = self.layout(doc)
        missing = [c for c in range(lay.chunks) if str(c) not in doc["chunks"]]
        if missing or not doc.get("complete"):
            raise CacheError(f"{where} is incomplete ({lay.chunks - len(missing)} of {lay.chunks} "
                             "chunks): resume with `edgekd ig compute RUN_DIR`")
        bad = self.bad_chunks(doc)
        if bad:
            raise CacheError(f"{where}/{MAPS}: chunk(s) {', '.join(map(str, bad[:5]))} fail their "
                             "checksum (corrupt): recompute them with `edgekd ig compute RUN_DIR`")
        return doc

    def load(self, identity: dict | None = None, check: tuple[str, ...] = (),
             relative: bool = False, lazy: bool = False) -> torch.Tensor | MapRows:
        """All maps (N, H, W) after `verify`: float32 attributions, or with `relative` each
        map divided by its maximum, as float16 (half the memory; what the overlay needs).
        With `lazy` (and `relative`) a `MapRows` reader instead, which holds no maps in memory
        (a data set read from disk: the maps at 224 px are 100 kB an image)."""
        doc = self.verify(identity, check)
        lay = self.layout(doc)
        if relative and lazy:
            return MapRows(self.folder / MAPS)
        maps, scales = self._open(lay, "r")
        if relative:
            rel = maps.astype(np.float16) / np.float16(255) if lay.dtype == "uint8" else np.array(maps)
            return torch.from_numpy(rel)
        return torch.from_numpy(maps.astype(np.float32) * scales[:, None, None])

    @staticmethod
    def content_id(doc: dict) -> str:
        """Identity of what the cache holds: what made it and the bytes of every chunk."""
        keys = ("teacher_sha256", "dataset", "settings", "dtype", "shape", "chunk_size", "chunks")
        blob = json.dumps({k: doc[k] for k in keys}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    # ---- writing -----------------------------------------------------------------------
    def prepare(self, identity: dict, force: bool = False) -> tuple[dict, list[str]]:
        """Open the cache for `identity` (creating it when needed): (manifest, notes).

        A cache of another identity is refused (StaleCacheError) unless `force`; damaged
        files are recreated and corrupt chunks dropped, each with a note saying so.
        """
        notes: list[str] = []
        try:
            doc = self.manifest()
        except CacheError:
            notes.append(f"{MANIFEST} is unreadable or not an edgekd IG manifest: starting over")
            doc = None
        if doc is not None and not force:
            same = all(doc.get(k) == identity[k] for k in identity)
            if not same:
                where = self.folder
                raise StaleCacheError(f"{where} holds IG maps {_why_stale(doc, identity)}: "
                                      f"pass --force to recompute them (edgekd ig compute {where.parent} --force)")
        if doc is not None and not force:
            why = self.damage(doc)
            if why:
                notes.append(f"{why}: recomputing every map")
                doc = None
        if doc is not None and not force:
            bad = self.bad_chunks(doc)
            if bad:
                notes.append(f"chunk(s) {', '.join(map(str, bad))} failed their checksum: recomputing them")
                for c in bad:
                    doc["chunks"].pop(str(c))
                doc["complete"] = False
                write_json(self.folder / MANIFEST, doc)
            return doc, notes
        return self._create(identity), notes

    def _create(self, identity: dict) -> dict:
        lay = Layout(*identity["shape"], identity["dtype"], identity["chunk_size"])
        self.folder.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "version": VERSION, **identity, "chunks": {}, "complete": False}
        # The manifest first: from here on the old data files can never be taken as complete.
        write_json(self.folder / MANIFEST, doc)
        for name in self._files(lay):
            (self.folder / name).unlink(missing_ok=True)
        try:
            maps = np.lib.format.open_memmap(self.folder / MAPS, mode="w+", dtype=lay.dtype,
                                             shape=(lay.n, lay.h, lay.w))
            _reserve(self.folder / MAPS, maps)
            del maps
            scales = np.lib.format.open_memmap(self.folder / SCALES, mode="w+", dtype=np.float32,
                                               shape=(lay.n,))
            _reserve(self.folder / SCALES, scales)
            del scales
        except OSError as e:
            for name in self._files(lay):
                (self.folder / name).unlink(missing_ok=True)
            raise _disk_error(e, self.folder) from None
        return doc

    def open_for_writing(self, doc: dict) -> ChunkWriter:
        return ChunkWriter(self, self.layout(doc))

    def record(self, doc: dict, done: dict[int, str], complete: bool = False, **info) -> None:
        """Mark chunks complete (their bytes are on disk already) and replace the manifest."""
        doc["chunks"].update({str(c): d for c, d in done.items()})
        doc["chunks"] = dict(sorted(doc["chunks"].items(), key=lambda kv: int(kv[0])))
        doc["complete"] = complete
        doc.update(info)
        try:
            write_json(self.folder / MANIFEST, doc)
        except OSError as e:
            raise _disk_error(e, self.folder) from None


class ChunkWriter:
    """Writes whole chunks into the memory map and flushes them before they are recorded."""

    def __init__(self, cache: MapCache, lay: Layout):
        self.cache, self.lay = cache, lay
        self.maps, self.scales = cache._open(lay, "r+")

    def write(self, c: int, maps: torch.Tensor) -> str:
        """Store chunk `c` (float32 maps), flush it to disk, return its sha256."""
        a, b = self.lay.span(c)
        m = maps.numpy().astype(np.float32)
        peak = m.reshape(len(m), -1).max(axis=1)
        rel = m / np.where(peak > 0, peak, 1.0)[:, None, None]  # each map's maximum -> 1
        if self.lay.dtype == "uint8":
            self.maps[a:b] = np.clip(np.rint(rel * 255.0), 0, 255).astype(np.uint8)
            self.scales[a:b] = peak / 255.0
        else:
            self.maps[a:b] = rel.astype(np.float16)
            self.scales[a:b] = peak
        try:
            self.maps.flush()
            self.scales.flush()
        except OSError as e:
            raise _disk_error(e, self.cache.folder) from None
        return MapCache._chunk_sha(self.maps, self.scales, a, b)


def _reserve(path: Path, arr: np.memmap) -> None:
    """Allocate the file's blocks now: a full disk fails here with an error, instead of a
    SIGBUS later when the memory map writes into a sparse file."""
    arr.flush()
    with open(path, "rb+") as f:
        size = os.fstat(f.fileno()).st_size
        with contextlib.suppress(AttributeError):  # no posix_fallocate (macOS): sparse it is
            os.posix_fallocate(f.fileno(), 0, size)


def _disk_error(e: OSError, folder: Path) -> EdgeKDError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return CacheError(f"cannot write the IG maps in {folder} ({os.strerror(e.errno)}): free disk "
                          "space (or choose another --out) and rerun to resume")
    return CacheError(f"cannot write the IG maps in {folder} ({e.strerror or e}): check the folder")
