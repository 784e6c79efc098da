"""Latency measurements kept between selections, one JSON file per measurement, keyed by
everything the figure depends on: the target's environment fingerprint, the architecture
(its structure, not only its name), input size, batch, backend, precision, threads and the
harness settings. A second selection on the same device re-measures nothing.

Default folder: edgekd's cache root (EDGEKD_CACHE, else ~/.cache/edgekd, as the decoded data
sets); the measurements live in its `latency/` sub-folder. A damaged file is a miss, never an
error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgekd.io import sha256_json, write_json

SCHEMA = "edgekd.latency-cache"
VERSION = 2  # 2: p90 and p99 keep their confidence intervals


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


def environment_fingerprint(probe: dict, backend: str) -> dict:
    """What identifies a target's latency behaviour, from deploy/probe.py's answer: the machine,
    its CPU and usable cores, Python and the backend's libraries, the L4T release."""
    modules = probe.get("modules") or {}
    libs = ("onnxruntime",) if backend == "onnxruntime" else ("tensorrt", "pycuda")
    # The hostname tells devices apart (a container that gets a new one each time never hits
    # the cache: it may be another machine); ONNX Runtime's providers tell onnxruntime-gpu
    # from the CPU build of the same version; the power mode changes a Jetson's clocks.
    return {"hostname": probe.get("hostname"), "machine": probe.get("machine"),
            "cpu": probe.get("cpu"), "usable_cores": probe.get("usable_cores"),
            "python": (probe.get("python") or {}).get("version"),
            "libraries": {m: modules.get(m) for m in libs},
            "ort_providers": probe.get("ort_providers") if backend == "onnxruntime" else None,
            "l4t": probe.get("l4t"), "nvpmodel": probe.get("nvpmodel")}


class LatencyCache:
    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else default_cache_dir()
        self.folder = self.folder / "latency"

    @staticmethod
    def key(ident: dict) -> str:
        return sha256_json({"schema": SCHEMA, "version": VERSION, **ident})[:32]

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            doc = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("key") != key:
            return None
        record = doc.get("record")
        return record if isinstance(record, dict) and isinstance(record.get("latency_ms"), dict) else None

    def put(self, key: str, ident: dict, record: dict) -> None:
        write_json(self._path(key), {"schema": SCHEMA, "version": VERSION, "key": key,
                                     "ident": ident, "record": record})
