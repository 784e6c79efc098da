"""The device bundle: a folder with the models, real sample images with labels, an optional
calibration set, a copy of deploy/ and calibration/, and manifest.json with the sha256 of
every file (format in deploy/SCHEMA.md). Built on the workstation, checked on the device by
deploy.verify before anything in it runs.

The manifest holds nothing that changes between two builds of the same inputs (no times), so
its own sha256 names the bundle: equal ids mean equal bundles, and a transfer interrupted
half-way resumes into the same staging folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Dict, List, Optional

import numpy as np

from .errors import DeployError
from .verify import MANIFEST, SCHEMA, VERSION, sha256_file, verify_bundle

PACKAGES = ("deploy", "calibration")  # shipped as source: the device runs `python3 -m deploy`
_PACKAGE_FILES = (".py", ".md")
SAMPLES = "data/samples.npy"
LABELS = "data/samples_labels.npy"
CALIB_FILES = ("images.npy", "labels.npy", "calib.json")
ACCURACY_BATCH = 32


def _package_dir(name: str) -> str:
    module = __import__(name)
    return os.path.dirname(os.path.abspath(module.__file__))


def build_bundle(
    dest: str,
    models: Dict[str, Dict[str, Any]],
    samples: str,
    labels: str,
    name: str,
    calibration: Optional[str] = None,
    source: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Build the bundle folder `dest` (replaced atomically) and return its manifest, with
    `manifest_sha256` (the bundle id) added.

    `models` maps a key (e.g. 'student', 'teacher.int8') to {'path': ONNX file, plus any
    JSON-ready facts such as arch, macs, precision}. `samples` (N, C, H, W) float32 and
    `labels` (N,) int are .npy files; `calibration` is a calibration-set folder (calibration/).
    """
    if not models:
        raise DeployError("a bundle needs at least one model")
    x = _load_npy(samples, "samples")
    y = _load_npy(labels, "labels")
    if x.ndim != 4 or y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DeployError("samples %s %s and labels %s %s do not pair up: need (N, C, H, W) and (N,) "
                          "integers" % (samples, x.shape, labels, y.shape))
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".tmp-", dir=parent)
    try:
        files: List[str] = []
        entries: Dict[str, Dict[str, Any]] = {}
        for key in sorted(models):
            info = dict(models[key])
            path = info.pop("path")
            rel = "models/%s.onnx" % key
            _copy(path, os.path.join(tmp, rel))
            files.append(rel)
            info["file"] = rel
            # What the workstation predicts: the device must agree (deploy.run_bundle).
            info["workstation_predictions"] = predict_top1(path, x)
            info["workstation_top1"] = round(
                100.0 * float(np.mean(np.asarray(info["workstation_predictions"]) == y)), 4)
            entries[key] = info
        _copy(samples, os.path.join(tmp, SAMPLES))
        _copy(labels, os.path.join(tmp, LABELS))
        files += [SAMPLES, LABELS]
        calib = None
        if calibration:
            for f in CALIB_FILES:
                _copy(os.path.join(calibration, f), os.path.join(tmp, "calib", f))
                files.append("calib/" + f)
            calib = {"dir": "calib", "format": "edgekd.calibset"}
        for package in PACKAGES:
            root = _package_dir(package)
            for f in sorted(os.listdir(root)):
                if f.endswith(_PACKAGE_FILES) and os.path.isfile(os.path.join(root, f)):
                    rel = "%s/%s" % (package, f)
                    _copy(os.path.join(root, f), os.path.join(tmp, rel))
                    files.append(rel)
        manifest = {
            "schema": SCHEMA,
            "schema_version": VERSION,
            "name": name,
            "source": source or {},
            "models": entries,
            "samples": {"file": SAMPLES, "labels": LABELS, "count": int(x.shape[0]),
                        "shape": [int(d) for d in x.shape], "dtype": x.dtype.name},
            "calibration": calib,
            "files": {rel: {"sha256": sha256_file(os.path.join(tmp, rel)),
                            "bytes": os.path.getsize(os.path.join(tmp, rel))} for rel in sorted(files)},
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        checked = verify_bundle(tmp)  # what the device will check, checked here first
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return checked


def predict_top1(onnx_path: str, x: np.ndarray, batch: int = ACCURACY_BATCH) -> List[int]:
    """Top-1 class of every sample with ONNX Runtime on the CPU, one thread (deterministic)."""
    from .runners import OrtRunner

    runner = OrtRunner(onnx_path, intra_op_threads=1)
    try:
        return top1(runner, x, batch)
    finally:
        runner.close()


def top1(runner: Any, x: np.ndarray, batch: int = ACCURACY_BATCH) -> List[int]:
    """Top-1 class per sample through any runner, in chunks of `batch` (the last one smaller),
    or of the runner's largest batch when that is less (an engine built for batch 1 takes 1)."""
    fixed = runner.input_shape[0] if runner.input_shape else None
    largest = getattr(runner, "max_batch", None)
    step = fixed or (min(batch, largest) if largest else batch)
    out: List[int] = []
    for i in range(0, x.shape[0], step):
        chunk = np.ascontiguousarray(x[i:i + step], dtype=runner.input_dtype)
        if fixed and chunk.shape[0] < fixed:  # a fixed-batch engine: pad, then drop the padding
            pad = np.repeat(chunk[-1:], fixed - chunk.shape[0], axis=0)
            logits = runner.run(np.concatenate([chunk, pad]))[: chunk.shape[0]]
        else:
            logits = runner.run(chunk)
        out.extend(int(k) for k in np.argmax(logits, axis=1))
    return out


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DeployError("cannot read %s %s as .npy: %s" % (what, path, e)) from e


def _copy(src: str, dst: str) -> None:
    if not os.path.isfile(src):
        raise DeployError("%s not found: cannot put it in the bundle" % src)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)


def _replace_dir(src: str, dst: str) -> None:
    if not os.path.isdir(dst):
        os.rename(src, dst)
        return
    old = os.path.join(os.path.dirname(dst), ".%s.old-%s" % (os.path.basename(dst), uuid.uuid4().hex[:8]))
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)
