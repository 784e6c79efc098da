"""Where decoded data sets are cached (EDGEKD_CACHE, else ~/.cache/edgekd)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
