"""INT8 for an exported model: calibration set from the training split, ONNX Runtime static
QDQ quantization (calibration/), accuracy on the test split against FP32, and the budget.

The graph takes raw [0, 1] pixels (normalisation is folded in), so the calibration images
are the uint8 training images divided by 255, exactly what the device feeds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from calibration import (
    CalibrationError,
    check_contract,
    load_calibset,
    stratified_indices,
    write_calibset,
)
from edgekd.data import Dataset
from edgekd.errors import EdgeKDError
from edgekd.export.onnx import read_contract

CALIB_DIR = "calib"  # RUN/calib/: the name deploy's bundle looks for


class QuantizeError(EdgeKDError):
    """INT8 quantization was refused: over its accuracy budget, or given mismatched inputs."""


def int8_path(fp32: str | Path) -> Path:
    """student.onnx -> student.int8.onnx (the name bench and deploy look for)."""
    fp32 = Path(fp32)
    return fp32.with_name(fp32.name.removesuffix(".onnx") + ".int8.onnx")


def pixels(images) -> np.ndarray:
    """uint8 (N, 3, H, W) images (tensor or array) -> float32 model input in [0, 1]."""
    return np.asarray(images, dtype=np.float32) / np.float32(255.0)


def write_run_calibset(folder: str | Path, data: Dataset, n: int, seed: int) -> dict:
    """Write (or keep, when it already holds the same choice) a stratified calibration set of
    `n` training images; returns its calib.json."""
    folder = Path(folder)
    labels = data.train.labels.numpy()
    source = f"{data.name} train split, fingerprint {data.fingerprint()[:16]}"
    try:
        existing = load_calibset(folder, verify=True).meta
        if existing["count"] == n and existing["seed"] == seed and existing["source"] == source:
            return existing
    except CalibrationError:
        pass
    try:
        idx = stratified_indices(labels, n, seed)
    except CalibrationError as e:
        raise QuantizeError(str(e)) from None
    write_calibset(folder, pixels(data.train.images[idx]), labels[idx], data.classes, seed,
                   source, overwrite=True)
    return load_calibset(folder, verify=False).meta


def quantize_onnx(
    fp32: str | Path,
    out: str | Path,
    calib_dir: str | Path,
    test_images,
    test_labels,
    method: str = "minmax",
    max_drop: float = 1.0,
    exclude: Sequence[str] = (),
    for_tensorrt: bool | None = None,
) -> dict:
    """Quantize `fp32` to INT8 QDQ with the set in `calib_dir`, measure top-1 on the test
    images against FP32 and write `out` only when the drop is within `max_drop` pp.

    A calibration set that does not fit the model's input contract is refused; over budget,
    nothing is written and the error names the measured drop and the remedies. With
    `for_tensorrt` (default: the model was exported for a jetson-* target) the Q/DQ are
    placed as TensorRT's explicit quantization wants them (symmetric, FP32 bias).
    """
    from calibration import check_budget, compare_accuracy, quantize_static_qdq

    fp32, out = Path(fp32), Path(out)
    if not fp32.is_file():
        raise QuantizeError(f"no ONNX model at {fp32}: export one first (edgekd export)")
    try:
        calib = load_calibset(calib_dir)
        contract = read_contract(fp32)
        check_contract(calib.meta, contract)
        if for_tensorrt is None:
            for_tensorrt = str(contract.get("target", "")).startswith("jetson")
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.onnx", dir=out.parent)
        os.close(fd)
        try:
            info = quantize_static_qdq(fp32, tmp, calib.images, method=method, exclude=exclude,
                                       for_tensorrt=for_tensorrt)
            accuracy = compare_accuracy(fp32, tmp, test_images, test_labels)
            info["accuracy"] = accuracy
            info["max_drop_pp"] = max_drop
            check_budget(accuracy, max_drop)
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except CalibrationError as e:
        raise QuantizeError(f"{fp32.name}: {e}") from None
    info["out_path"] = str(out)
    info["calibration"] = {"dir": str(calib_dir), "count": calib.meta["count"],
                           "seed": calib.meta["seed"], "source": calib.meta["source"]}
    return info
