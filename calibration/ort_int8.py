"""ONNX Runtime static INT8 quantization (QDQ) and the accuracy check that gates it.

Defaults: QDQ format, INT8 (S8S8) activations and per-channel symmetric INT8 weights. That
is ONNX Runtime's default and recommended setting: its CPU provider rewrites S8 activations
to U8 where the x86 kernels want it, and ARM64 runs S8S8 natively, so QInt8 is the fastest
common choice. `for_tensorrt=True` makes the Q/DQ model
TensorRT's explicit quantization accepts: symmetric activations (zero point 0), Q/DQ pairs on
FP32 weights and FP32 bias.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator

from ._files import PathLike, fsync_file
from .calibset import CalibSetReader
from .errors import CalibrationError

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
BUDGET_HINT = (
    "try more calibration images (--calib-size), another --method (entropy|percentile), "
    "or keep sensitive layers in FP32 with --exclude"
)


def _single_input(model: onnx.ModelProto) -> Tuple[str, Optional[int]]:
    """Name and fixed batch size (None when dynamic) of the model's only input."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CalibrationError(
            f"calibration feeds models with one input, this one has {[i.name for i in inputs]}"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    return inputs[0].name, batch


def _preprocess(src: str, tmp_dir: str) -> Tuple[str, Optional[str]]:
    """Run ORT's quantization pre-processing; fall back to the raw model if it fails.

    Returns the model path to quantize and, on fallback, why pre-processing was skipped.
    Symbolic shape inference needs sympy and can fail on unusual graphs, so ONNX shape
    inference alone is tried next.
    """
    out = os.path.join(tmp_dir, "preprocessed.onnx")
    try:
        from onnxruntime.quantization import quant_pre_process  # absent before ORT 1.14
    except ImportError as e:
        return src, f"quant_pre_process unavailable: {e}"
    reasons = []
    for options in ({}, {"skip_symbolic_shape": True}):
        try:
            quant_pre_process(src, out, **options)
            return out, None
        except Exception as e:  # any failure here only costs the optimisation
            reasons.append(f"{type(e).__name__}: {e}".splitlines()[0])
    return src, "quant_pre_process failed: " + " / ".join(reasons)


def _entropy_overrides(model_path: str, reader: CalibSetReader, tmp_dir: str) -> Dict[str, Any]:
    """Entropy (KL) ranges from TensorRT's histogram settings, as ORT TensorQuantOverrides.

    quantize_static runs ORT's entropy calibrator with 128 histogram bins and 128 quantized
    bins, which leaves one candidate threshold, the full range: min-max in disguise. With
    2048 bins (TensorRT's choice) the KL search can actually clip outliers.
    """
    if tuple(int(p) for p in ort.__version__.split(".")[:2]) < (1, 17):
        raise CalibrationError(
            f"--method entropy needs onnxruntime >= 1.17 (found {ort.__version__}): "
            "upgrade onnxruntime or use --method percentile"
        )
    calibrator = create_calibrator(
        Path(model_path),
        [],
        augmented_model_path=os.path.join(tmp_dir, "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 2048, "num_quantized_bins": 128},
    )
    calibrator.collect_data(reader)
    reader.rewind()
    overrides = {}
    for name, data in calibrator.compute_data().items():
        low, high = getattr(data, "range_value", data)  # TensorData, or a tuple before ORT 1.18
        overrides[name] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
    return overrides


def match_nodes(model: onnx.ModelProto, patterns: Sequence[str]) -> List[str]:
    """Names of the nodes whose name or op type matches any fnmatch pattern."""
    names = []
    for pattern in patterns:
        hits = [
            n.name
            for n in model.graph.node
            if fnmatch.fnmatchcase(n.name, pattern) or fnmatch.fnmatchcase(n.op_type, pattern)
        ]
        if not hits:
            examples = ", ".join(repr(n.name) for n in model.graph.node[:3])
            raise CalibrationError(
                f"--exclude {pattern!r} matches no node: use node names (e.g. {examples}) "
                "or op types (e.g. 'Conv', 'Gemm')"
            )
        names.extend(h for h in hits if h not in names)
    return names


def quantize_static_qdq(
    fp32_path: PathLike,
    out_path: PathLike,
    calib_images: Any,
    method: str = "minmax",
    per_channel: bool = True,
    exclude: Optional[Sequence[str]] = (),
    batch_size: int = 32,
    for_tensorrt: bool = False,
    reduce_range: bool = False,
) -> Dict[str, Any]:
    """Quantize an FP32 ONNX model to INT8 QDQ with static calibration on `calib_images`.

    `exclude` holds fnmatch patterns on node names or op types kept in FP32; a model with a
    fixed batch dimension is calibrated at that size instead of `batch_size`. The result is
    written atomically to `out_path`; returns what was done (method, excluded nodes, number
    of QuantizeLinear nodes, sizes in bytes, whether pre-processing ran).
    """
    if method not in METHODS:
        raise CalibrationError(f"unknown --method {method!r}: choose one of {', '.join(METHODS)}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise CalibrationError(f"no ONNX model at {fp32_path}: export one first (edgekd export)")
    input_name, fixed_batch = _single_input(onnx.load(str(fp32_path), load_external_data=False))
    reader = CalibSetReader(
        calib_images,
        fixed_batch or batch_size,
        input_name,
        # ORT's histogram calibrators (entropy, percentile) stack the outputs of all batches
        # with np.asarray, which fails on a short last batch: keep every batch full-size.
        pad_last=True,
    )

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary folder sits next to out_path so the final os.replace is atomic; ORT's
    # calibrators print progress to stdout, which a library must not do.
    tmp_dir = tempfile.TemporaryDirectory(prefix=".quantize-", dir=str(out_path.parent))
    with tmp_dir as tmp, contextlib.redirect_stdout(io.StringIO()):
        src, preprocess_note = _preprocess(str(fp32_path), tmp)
        model = onnx.load(src, load_external_data=False)
        excluded = match_nodes(model, exclude or ())
        extra: Dict[str, Any] = {"WeightSymmetric": True}
        if method == "entropy":
            extra["TensorQuantOverrides"] = _entropy_overrides(src, reader, tmp)
        if for_tensorrt:
            # TensorRT's explicit quantization: INT8 with zero point 0 only, Q/DQ pairs on
            # FP32 weights, FP32 bias, and Q/DQ on the inputs of quantized ops but not on
            # their outputs (NVIDIA's placement advice; ModelOpt drives ORT the same way).
            extra.update(
                ActivationSymmetric=True,
                AddQDQPairToWeight=True,
                QuantizeBias=False,
                OpTypesToExcludeOutputQuantization=sorted({n.op_type for n in model.graph.node}),
            )
        tmp_out = os.path.join(tmp, "int8.onnx")
        quantize_static(
            src,
            tmp_out,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            # entropy ranges arrive as overrides; the min-max pass only fills any gaps
            calibrate_method=METHODS["minmax" if method == "entropy" else method],
            extra_options=extra,
        )
        quantized = sum(n.op_type == "QuantizeLinear" for n in onnx.load(tmp_out).graph.node)
        fsync_file(tmp_out)
        os.replace(tmp_out, str(out_path))
    return {
        "method": method,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "for_tensorrt": for_tensorrt,
        "activation_type": "QInt8",
        "activation_symmetric": for_tensorrt,
        "weight_type": "QInt8",
        "calib_images": int(len(calib_images)),
        "preprocessed": preprocess_note is None,
        "preprocess_note": preprocess_note,
        "excluded_nodes": excluded,
        "quantized_nodes": int(quantized),
        "size_fp32_bytes": fp32_path.stat().st_size,
        "size_int8_bytes": out_path.stat().st_size,
        "out_path": str(out_path),
    }


def _session(path: PathLike, exact: bool = False) -> ort.InferenceSession:
    if not Path(path).is_file():
        raise CalibrationError(f"no ONNX model at {path}: check the path")
    options = ort.SessionOptions()
    if exact:
        # No graph rewrites: each DequantizeLinear -> FP32 op -> QuantizeLinear runs as written,
        # the arithmetic TensorRT, ARM and VNNI/AMX x86 kernels reproduce (int32 accumulation).
        # ORT's fused x86 kernels without VNNI instead sum u8 x s8 pairs in 16 bits
        # (vpmaddubsw), which saturates with full-range weights (docs/int8.md).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(path: PathLike, images: Any, batch_size: int = 256, exact: bool = False) -> np.ndarray:
    """Arg-max class of every image under an ONNX Runtime CPU session; `exact` runs a Q/DQ
    graph's own arithmetic instead of this CPU's fused integer kernels."""
    sess = _session(path, exact)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch_size
    preds = []
    for start in range(0, len(images), step):
        batch = np.ascontiguousarray(images[start : start + step], dtype=np.float32)
        n = len(batch)
        if fixed and n < fixed:  # pad a fixed-batch model's last batch, drop the padding after
            batch = np.concatenate([batch, np.zeros((fixed - n,) + batch.shape[1:], np.float32)])
        logits = sess.run(None, {inp.name: batch})[0]
        preds.append(np.argmax(logits[:n], axis=1))
    return np.concatenate(preds).astype(np.int64)


def evaluate_onnx(
    path: PathLike, images: Any, labels: Any, batch_size: int = 256, exact: bool = False
) -> Dict[str, Any]:
    """Top-1 accuracy (percent) of an ONNX classifier on `images`, with its predictions
    (`exact`: see predict)."""
    labels = np.asarray(labels).reshape(-1)
    if len(images) == 0 or len(images) != len(labels):
        raise CalibrationError(
            f"need one label per image and at least one image, got {len(images)} images "
            f"and {len(labels)} labels"
        )
    predictions = predict(path, images, batch_size, exact)
    return {
        "top1": float(np.mean(predictions == labels) * 100.0),
        "n": int(len(labels)),
        "predictions": predictions,
    }


def compare_accuracy(
    fp32_path: PathLike, int8_path: PathLike, images: Any, labels: Any, batch_size: int = 256,
    exact: bool = True,
) -> Dict[str, Any]:
    """FP32 vs INT8 top-1 (percent), the drop in percentage points and prediction agreement.

    The INT8 model is run `exact` by default: the accuracy of the quantized graph itself, as
    a device computes it, not of this workstation's integer kernels (see predict)."""
    fp32 = evaluate_onnx(fp32_path, images, labels, batch_size)
    int8 = evaluate_onnx(int8_path, images, labels, batch_size, exact=exact)
    return {
        "fp32_top1": fp32["top1"],
        "int8_top1": int8["top1"],
        "drop_pp": fp32["top1"] - int8["top1"],
        "agreement": float(np.mean(fp32["predictions"] == int8["predictions"]) * 100.0),
        "n": fp32["n"],
        "int8_arithmetic": "exact Q/DQ" if exact else "this CPU's kernels",
    }


def check_budget(result: Dict[str, Any], max_drop_pp: float) -> Dict[str, Any]:
    """Return `result` if its INT8 accuracy drop is within `max_drop_pp`, else raise."""
    if max_drop_pp < 0:
        raise CalibrationError(f"the accuracy budget must be >= 0 pp, got {max_drop_pp}")
    drop = result["drop_pp"]
    if drop > max_drop_pp:
        raise CalibrationError(
            f"INT8 accuracy dropped {drop:.2f} pp (> budget {max_drop_pp:.2f} pp): {BUDGET_HINT}"
        )
    return result
