"""Small file helpers shared by the calibration modules: hashing and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Union

# os.PathLike is not subscriptable before Python 3.9.
PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large sets never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: PathLike) -> None:
    """Flush a written file to disk; a Jetson that loses power must not keep a torn file."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, str(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
