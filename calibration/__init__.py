"""Calibration sets and INT8 quantization for ONNX Runtime and TensorRT; torch-free.

Runs on the workstation and on the device (Python 3.8+). The ONNX Runtime functions are
loaded on first use, so `import calibration` and the TensorRT calibrator also work on a
device that has TensorRT but no onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .calibset import (
    CalibSet,
    CalibSetReader,
    check_contract,
    load_calibset,
    stratified_indices,
    write_calibset,
)
from .errors import CalibrationError
from .trt_int8 import (
    CalibBatches,
    CalibrationCache,
    int8_support,
    make_entropy_calibrator,
    trt_version_info,
)

if TYPE_CHECKING:
    from .ort_int8 import (
        check_budget,
        compare_accuracy,
        evaluate_onnx,
        match_nodes,
        predict,
        quantize_static_qdq,
    )

_ORT_NAMES = (
    "check_budget",
    "compare_accuracy",
    "evaluate_onnx",
    "match_nodes",
    "predict",
    "quantize_static_qdq",
)

__all__ = [
    "CalibBatches",
    "CalibSet",
    "CalibSetReader",
    "CalibrationCache",
    "CalibrationError",
    "check_contract",
    "int8_support",
    "load_calibset",
    "make_entropy_calibrator",
    "stratified_indices",
    "trt_version_info",
    "write_calibset",
    # loaded lazily from .ort_int8:
    "check_budget",
    "compare_accuracy",
    "evaluate_onnx",
    "match_nodes",
    "predict",
    "quantize_static_qdq",
]


def __getattr__(name: str) -> Any:  # PEP 562: import onnxruntime only when asked for
    if name in _ORT_NAMES:
        return getattr(importlib.import_module(".ort_int8", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
