"""`imagefolder:PATH`: PATH/train/<class>/*, PATH/test/<class>/* and optionally PATH/val/<class>/*.

Images of any size and mode are decoded once, resized as torchvision's Resize + CenterCrop
do to the model's input size and cached on disk (`edgekd.data.store`) keyed by the folder's
file list, sizes and mtimes; small sets are then read into memory, large ones stay on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from edgekd.data.cache import cache_dir
from edgekd.data.dataset import (
    Dataset,
    LoadRequest,
    Split,
    channel_stats,
    register_loader,
    stratified_split,
    use_disk,
)
from edgekd.data.store import ImageStore, StoreWriter, open_or_build
from edgekd.errors import DataError
from edgekd.io import write_json

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


def _rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit and 32-bit grey scaled down (not clipped), palette
    and alpha images flattened, grey replicated."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode != "I" or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(a * 255.0 if a.max() <= 1.0 else a), 0, 255).astype(np.uint8), "L")
    elif im.mode in ("P", "PA", "LA"):
        im = im.convert("RGBA")
    return im.convert("RGB")


def _decode(path: Path, size: int) -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(size) on the RGB image, as uint8 (3, size, size):
    the preprocessing a plain torchvision evaluation uses, so accuracies agree exactly."""
    with Image.open(path) as im:
        im.load()
        im = TF.center_crop(TF.resize(_rgb(im), [size], interpolation=TF.InterpolationMode.BILINEAR,
                                      antialias=True), [size])
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _try_decode(path: Path, size: int) -> np.ndarray | str:
    try:
        return _decode(path, size)
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, struct.error, bombs...)
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return f"{type(e).__name__}: {first}" if first else type(e).__name__


Progress = Callable[[int, int, str], None]  # (images done, total, which split)


def _build_store(folder: Path, paths: list[Path], labels: list[int], size: int, what: str,
                 progress: Progress | None) -> None:
    writer = StoreWriter(folder, len(paths), (3, size, size), {"labels": labels})
    bad_file = folder / "bad.json"
    bad = json.loads(bad_file.read_text()) if writer.done and bad_file.is_file() else []
    bad = [b for b in bad if b["index"] < writer.done]  # a crash may have left later ones
    zero = np.zeros((3, size, size), np.uint8)
    chunk = 256
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for a in range(writer.done, len(paths), chunk):
            out = list(pool.map(lambda p: _try_decode(p, size), paths[a : a + chunk]))
            for k, r in enumerate(out):
                if isinstance(r, str):
                    bad.append({"index": a + k, "file": str(paths[a + k]), "error": r[:200]})
                    out[k] = zero
            write_json(bad_file, bad)  # before the rows it describes are recorded as done
            writer.write(a, np.stack(out))
            if progress is not None:
                progress(writer.done, len(paths), what)
    writer.finish()


def _load_split(files: dict[str, list[Path]], classes: list[str], size: int, disk: bool,
                skip_bad: bool, what: str, progress: Progress | None) -> tuple[Split, list[dict]]:
    """A split decoded once into an on-disk store (keyed by its classes, files, sizes and
    mtimes), then read into memory or from disk. Unreadable images: refused naming the file,
    or left out (`skip_bad`) and returned."""
    paths = [p for c in classes for p in files.get(c, [])]
    labels = [i for i, c in enumerate(classes) for _ in files.get(c, [])]
    key = hashlib.sha256(repr(("v2", size, classes)).encode())
    for p in paths:
        st = p.stat()
        key.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    folder = cache_dir("imagefolder") / key.hexdigest()[:32]
    store = open_or_build(folder, lambda: _build_store(folder, paths, labels, size, what, progress))
    bad = json.loads((folder / "bad.json").read_text()) if (folder / "bad.json").is_file() else []
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"cannot read image {bad[0]['file']} ({bad[0]['error']}){more}: remove or "
                        "replace it, or pass --skip-bad-images")
    keep = np.setdiff1d(np.arange(len(paths)), [b["index"] for b in bad])
    label_t = torch.as_tensor(labels, dtype=torch.long)
    if bad:
        left = np.bincount(label_t.numpy()[keep], minlength=len(classes))
        empty = [c for c, k in zip(classes, left, strict=True) if k == 0]
        if empty:
            raise DataError(f"{what}/ has no readable image left in {empty}: replace the "
                            "unreadable ones (listed with --skip-bad-images in data.json)")
    images: torch.Tensor | ImageStore = store if disk else store[:]
    split = Split(images, label_t)
    return (split.subset(keep) if bad else split), [{"file": b["file"], "error": b["error"]} for b in bad]


def load_folder_split(files: dict[str, list[Path]], classes: list[str], size: int,
                      storage: str = "auto", skip_bad: bool = False) -> Split:
    """One split of class folders (`_scan`'s result) outside a data set (edgekd experiment
    shift), through the same decode and cache."""
    count = sum(len(fs) for fs in files.values())
    return _load_split(files, classes, size, use_disk(storage, count * 3 * size * size), skip_bad,
                       "images", None)[0]


def load_imagefolder(path: str, input_size: int, val_fraction: float, split_seed: int,
                     storage: str = "auto", skip_bad_images: bool = False,
                     progress: Progress | None = None) -> Dataset:
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

    val_files = _scan(val_dir) if val_dir.is_dir() else {}
    count = sum(len(fs) for files in (train_files, test_files, val_files) for fs in files.values())
    disk = use_disk(storage, count * 3 * input_size * input_size)  # on all splits together
    full_train, bad_train = _load_split(train_files, classes, input_size, disk, skip_bad_images, "train", progress)
    test, bad_test = _load_split(test_files, classes, input_size, disk, skip_bad_images, "test", progress)
    skipped = bad_train + bad_test
    if val_dir.is_dir():
        unknown = sorted(set(val_files) - set(classes))
        if unknown:
            raise DataError(f"{val_dir} has classes not in train: {unknown}: rename or remove them")
        val, bad_val = _load_split(val_files, classes, input_size, disk, skip_bad_images, "val", progress)
        train, skipped = full_train, skipped + bad_val
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
        extra={"split_seed": split_seed, "val_source": val_source,
               "preprocessing": f"torchvision Resize({input_size}) + CenterCrop({input_size}), RGB",
               **({"skipped_images": skipped} if skip_bad_images else {})},
    )


def _load(r: LoadRequest) -> Dataset:
    return load_imagefolder(r.path, r.input_size, r.val_fraction, r.split_seed, r.storage,
                            r.skip_bad_images, r.progress)


register_loader("imagefolder", _load)
