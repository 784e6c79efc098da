"""The calibration-set format: a folder of preprocessed images, labels and a manifest.

    <dir>/images.npy   (N, C, H, W) float32, preprocessed exactly as the model input expects
    <dir>/labels.npy   (N,) int64 class indices into calib.json "classes"
    <dir>/calib.json   format, version, count, shape, dtype, layout, classes, seed, source,
                       value_range and the sha256 of both .npy files

A set is written into a temporary sibling folder and renamed into place, so a reader
never sees a half-written set; the hashes catch later corruption or truncation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from ._files import PathLike, fsync_file, sha256_file
from .errors import CalibrationError

FORMAT = "edgekd.calibset"
VERSION = 1
IMAGES = "images.npy"
LABELS = "labels.npy"
MANIFEST = "calib.json"
_REQUIRED = ("shape", "classes", "sha256")


class CalibSet:
    """A loaded calibration set: `images` (N,C,H,W) float32, `labels` (N,) int64, `meta`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, meta: Dict[str, Any]):
        self.images = images
        self.labels = labels
        self.meta = meta

    @property
    def classes(self) -> List[str]:
        return list(self.meta["classes"])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"CalibSet(count={len(self)}, shape={tuple(self.images.shape)}, classes={len(self.classes)})"


def _checked_arrays(images: Any, labels: Any, classes: Sequence[str]):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[0] == 0:
        raise CalibrationError(
            f"calibration images must be a non-empty (N, C, H, W) array, got shape {images.shape}: "
            "stack the preprocessed model inputs"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise CalibrationError(
            f"calibration images are {images.dtype}, not float: apply the model's preprocessing "
            "(scaling, normalisation) before writing the set"
        )
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        raise CalibrationError("calibration images contain NaN or inf: check the preprocessing")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise CalibrationError(
            f"labels must be {images.shape[0]} integers (one per image), "
            f"got {labels.dtype} {labels.shape}"
        )
    if len(classes) == 0 or labels.min() < 0 or labels.max() >= len(classes):
        raise CalibrationError(
            f"labels must index into the {len(classes)} class names given, "
            f"found {labels.min()}..{labels.max()}"
        )
    return images, labels.astype(np.int64)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
    fsync_file(path)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`; an existing `dst` is swapped out, restored on failure."""
    if not dst.exists():
        os.replace(str(src), str(dst))
        return
    # POSIX cannot rename a folder over a non-empty one, so park the old set first.
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(str(dst), str(old))
    try:
        os.replace(str(src), str(dst))
    except BaseException:
        os.replace(str(old), str(dst))
        raise
    shutil.rmtree(str(old), ignore_errors=True)


def write_calibset(
    directory: PathLike,
    images: Any,
    labels: Any,
    classes: Sequence[str],
    seed: Optional[int],
    source: str,
    overwrite: bool = False,
) -> Path:
    """Write a calibration set to `directory` atomically and return its path."""
    directory = Path(directory)
    images, labels = _checked_arrays(images, labels, classes)
    if directory.exists() and not overwrite:
        raise CalibrationError(
            f"{directory} already exists: pass overwrite=True or choose another folder"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=str(directory.parent)))
    try:
        _save_npy(tmp / IMAGES, images)
        _save_npy(tmp / LABELS, labels)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "count": int(images.shape[0]),
            "shape": [int(d) for d in images.shape],
            "dtype": "float32",
            "layout": "NCHW",
            "classes": [str(c) for c in classes],
            "seed": None if seed is None else int(seed),
            "source": str(source),
            "value_range": [float(images.min()), float(images.max())],
            "sha256": {IMAGES: sha256_file(tmp / IMAGES), LABELS: sha256_file(tmp / LABELS)},
        }
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
        fsync_file(tmp / MANIFEST)
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(str(tmp), ignore_errors=True)
        raise
    return directory


def _read_manifest(directory: Path) -> Dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CalibrationError(
            f"no calibration set at {directory} ({MANIFEST} missing): write one with write_calibset()"
        )
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise CalibrationError(
            f"{path} is not valid JSON ({e}): re-create the calibration set"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CalibrationError(f"{path} is not an {FORMAT} manifest: point to a calibration set")
    if meta.get("version") != VERSION:
        raise CalibrationError(
            f"{path} has version {meta.get('version')}, this code reads version {VERSION}: "
            "use a matching edgekd"
        )
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        raise CalibrationError(f"{path} lacks {', '.join(missing)}: re-create the calibration set")
    return meta


def load_calibset(directory: PathLike, verify: bool = True, mmap: bool = False) -> CalibSet:
    """Load a calibration set; with `verify`, check the sha256 of both arrays first.

    `mmap=True` memory-maps images.npy, for sets larger than a device's RAM is comfortable with.
    """
    directory = Path(directory)
    meta = _read_manifest(directory)
    for name in (IMAGES, LABELS):
        path = directory / name
        if not path.is_file():
            raise CalibrationError(f"{path} is missing: re-create the calibration set")
        if verify and sha256_file(path) != meta["sha256"][name]:
            raise CalibrationError(
                f"{path} is corrupt or was modified (sha256 mismatch): re-create the calibration set"
            )
    try:
        images = np.load(
            str(directory / IMAGES), mmap_mode="r" if mmap else None, allow_pickle=False
        )
        labels = np.load(str(directory / LABELS), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CalibrationError(
            f"cannot read the arrays in {directory} ({e}): re-create the calibration set"
        ) from None
    shape = meta["shape"]
    if list(images.shape) != shape or images.dtype != np.float32 or labels.shape != (shape[0],):
        raise CalibrationError(
            f"arrays in {directory} do not match {MANIFEST} (images {images.dtype} "
            f"{images.shape}, labels {labels.shape}; expected float32 {shape}): "
            "re-create the calibration set"
        )
    return CalibSet(images, labels.astype(np.int64, copy=False), meta)


def stratified_indices(labels: Any, n: int, seed: int) -> np.ndarray:
    """Pick `n` indices spread evenly over the classes in `labels`, deterministic in `seed`.

    Each class gets floor(n/k) or ceil(n/k) images; a class with fewer images than its share
    gives all it has and the rest is spread over the others. Indices come back sorted.
    """
    labels = np.asarray(labels).reshape(-1)
    if n <= 0 or n > labels.size:
        raise CalibrationError(
            f"cannot pick {n} calibration images from {labels.size} labelled images: "
            f"choose --calib-size between 1 and {labels.size}"
        )
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse)
    take = np.zeros(classes.size, dtype=np.int64)
    remaining = n
    while remaining:  # water-filling: every pass fills the quota or exhausts a class
        open_ = np.flatnonzero(take < sizes)
        share, extra = divmod(remaining, open_.size)
        give = np.full(open_.size, share, dtype=np.int64)
        give[rng.permutation(open_.size)[:extra]] += 1  # random classes get the remainder
        give = np.minimum(give, sizes[open_] - take[open_])
        take[open_] += give
        remaining -= int(give.sum())
    picked = [
        rng.choice(np.flatnonzero(inverse == c), size=int(k), replace=False)
        for c, k in enumerate(take)
        if k
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def check_batching(images: Any, batch_size: int) -> None:
    """Raise CalibrationError unless `images` can be cut into batches of `batch_size`."""
    if int(batch_size) < 1:
        raise CalibrationError(f"batch_size must be >= 1, got {batch_size}")
    if getattr(images, "ndim", 0) < 2 or len(images) == 0:
        raise CalibrationError("calibration images must be a non-empty (N, C, H, W) array")


def iter_batches(images: Any, batch_size: int, pad_last: bool = False) -> Iterator[np.ndarray]:
    """C-contiguous float32 batches of `images`, in order.

    With `pad_last`, a last partial batch is completed with images from the start of the
    set (wrapping around), so that every batch has exactly `batch_size` rows.
    """
    n = len(images)
    for start in range(0, n, batch_size):
        stop = start + batch_size
        if stop <= n or not pad_last:
            batch = images[start:stop]
        else:
            batch = images[np.arange(start, stop) % n]
        yield np.ascontiguousarray(batch, dtype=np.float32)


class CalibSetReader:
    """Feeds images to ONNX Runtime calibration as {input_name: batch} dicts.

    Implements onnxruntime.quantization.CalibrationDataReader (which accepts any class with
    `get_next`) without importing onnxruntime, so this module loads on a TensorRT-only
    device. One pass yields every image once; `pad_last` wraps the last batch to full size.
    """

    def __init__(self, images: Any, batch_size: int, input_name: str, pad_last: bool = False):
        check_batching(images, batch_size)
        self.images = images
        self.batch_size = int(batch_size)
        self.input_name = input_name
        self.pad_last = pad_last
        self.rewind()

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        """Return the next {input_name: batch}, or None when the pass is over."""
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        """Start the next pass from the first image."""
        self._batches = iter_batches(self.images, self.batch_size, self.pad_last)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        self.rewind()
        return iter(self.get_next, None)


def check_contract(meta: Dict[str, Any], contract: Dict[str, Any], tolerance: float = 1e-3) -> None:
    """Raise CalibrationError unless a set (its calib.json) fits a model's input contract.

    `contract` is the model's metadata as edgekd writes it (layout, input_shape with a
    symbolic batch, value_range): a set made at another size, in another layout, or already
    normalised (values outside the raw [0, 1] pixels the graph expects) calibrates the wrong
    ranges without any error from ONNX Runtime, so it is refused here.
    """
    shape = list(contract.get("input_shape") or [])[1:]
    if shape and list(meta["shape"][1:]) != [int(d) for d in shape]:
        raise CalibrationError(
            f"calibration images are {tuple(meta['shape'][1:])} per image, the model takes "
            f"{tuple(shape)}: write the set at the model's input size (edgekd quantize does)"
        )
    layout = contract.get("layout")
    if layout and meta.get("layout", "NCHW") != layout:
        raise CalibrationError(
            f"calibration set layout {meta.get('layout')} differs from the model's {layout}"
        )
    expected = contract.get("value_range")
    seen = meta.get("value_range")
    if expected and seen and (seen[0] < expected[0] - tolerance or seen[1] > expected[1] + tolerance):
        raise CalibrationError(
            f"calibration images span [{seen[0]:.3g}, {seen[1]:.3g}], the model takes "
            f"[{expected[0]:g}, {expected[1]:g}] ({contract.get('normalization', 'raw pixels')}): "
            "store raw pixels scaled to the model's range, not normalised ones"
        )
