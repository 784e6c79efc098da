"""`imagefolder:PATH`: PATH/train/<class>/*, PATH/test/<class>/* and optionally PATH/val/<class>/*.

Images of any size are decoded once, resized (shorter side, then centre crop) to the model's
input size and cached as uint8 arrays keyed by the folder's file list, sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from edgekd.data.cache import cache_dir
from edgekd.data.dataset import Dataset, Split, channel_stats, stratified_split
from edgekd.errors import DataError
from edgekd.io import atomic_path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def _scan(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {
        c: sorted(
            p for p in (split_dir / c).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        for c in classes
    }


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path} ({e}): remove or replace the file") from None


def _load_split(files: dict[str, list[Path]], classes: list[str], size: int) -> Split:
    paths = [p for c in classes for p in files.get(c, [])]
    labels = [i for i, c in enumerate(classes) for _ in files.get(c, [])]
    key = hashlib.sha256(repr(size).encode())
    for p in paths:
        st = p.stat()
        key.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache_file = cache_dir("imagefolder") / f"{key.hexdigest()[:32]}.npz"
    if cache_file.exists():
        try:
            with np.load(cache_file) as z:
                return Split(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]))
        except Exception:  # a corrupt cache is rebuilt, never trusted
            cache_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda p: _decode(p, size), paths, chunksize=64))
    images = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)
    label_arr = np.asarray(labels, dtype=np.int64)
    with atomic_path(cache_file) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=label_arr)
    return Split(torch.from_numpy(images), torch.from_numpy(label_arr))


def load_imagefolder(path: str, input_size: int, val_fraction: float, split_seed: int) -> Dataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: pass imagefolder:PATH with an existing folder")
    train_dir, test_dir, val_dir = root / "train", root / "test", root / "val"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise DataError(
                f"{d} is missing: an image folder needs PATH/train/<class>/* and PATH/test/<class>/*"
            )
    train_files, test_files = _scan(train_dir), _scan(test_dir)
    classes = list(train_files)
    if set(test_files) != set(train_files):
        only_train = sorted(set(train_files) - set(test_files))
        only_test = sorted(set(test_files) - set(train_files))
        raise DataError(
            f"train and test classes differ in {root} (only in train: {only_train}, only in "
            f"test: {only_test}): give both splits the same class folders"
        )
    for name, files in (("train", train_files), ("test", test_files)):
        empty = [c for c, fs in files.items() if not fs]
        if not files or empty:
            what = f"classes without images: {empty}" if files else "no class folders"
            raise DataError(
                f"{root / name} has {what}: put images (jpg, png, ...) in PATH/{name}/<class>/"
            )
    if len(classes) < 2:
        raise DataError(f"{train_dir} has one class: a classifier needs at least two class folders")

    full_train = _load_split(train_files, classes, input_size)
    test = _load_split(test_files, classes, input_size)
    if val_dir.is_dir():
        val_files = _scan(val_dir)
        unknown = sorted(set(val_files) - set(classes))
        if unknown:
            raise DataError(f"{val_dir} has classes not in train: {unknown}: rename or remove them")
        train, val = full_train, _load_split(val_files, classes, input_size)
        val_source = "val/"
    else:
        counts = np.bincount(full_train.labels.numpy(), minlength=len(classes))
        frac = val_fraction if counts.min() >= 2 else 0.0
        train_idx, val_idx = stratified_split(full_train.labels.numpy(), frac, split_seed)
        train, val = full_train.subset(train_idx), full_train.subset(val_idx)
        val_source = f"{frac:.0%} of train, stratified, seed {split_seed}"
    mean, std = channel_stats(train.images)
    return Dataset(
        name=f"imagefolder:{root}",
        classes=classes,
        train=train,
        val=val,
        test=test,
        mean=mean,
        std=std,
        hflip=True,
        source=str(root),
        extra={"split_seed": split_seed, "val_source": val_source},
    )
