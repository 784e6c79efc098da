"""Per-layer INT8 diagnosis: which quantized tensor of a Q/DQ model loses the most against its
FP32 original, on real images.

Both models are run with every intermediate tensor made an output (ONNX Runtime's
`qdq_loss_debug`); for each activation the Q/DQ model quantizes, two signal-to-quantization-
noise ratios (dB, higher is better) are computed over the images:
- `sqnr_db`: the FP32 model's tensor against itself passed through that tensor's own
  QuantizeLinear/DequantizeLinear (its scale and zero point), i.e. what quantizing this one
  tensor costs on real data, free of the errors upstream (the ranking: worst first). ORT's own
  "qdq_err" compares the Q input with the DQ output inside the INT8 graph, which misreads a
  ReLU that the quantizer folded into the Q's range as noise;
- `sqnr_vs_fp32_db`: the INT8 model's dequantized tensor against the FP32 model's, i.e. the
  error accumulated up to this point.
Every row names the tensor, the node that produced it and the quantized nodes that consume it
(what `exclude` keeps in FP32), and the module scope the exporter encoded in the node name
(torch.onnx: "/body/layer3/layer3.0/conv1/Conv" -> "body.layer3.0.conv1").

numpy, onnx and onnxruntime only (Python 3.8+), like the rest of calibration/.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np
import onnx
import onnx.numpy_helper

from ._files import PathLike
from .calibset import CalibSetReader
from .errors import CalibrationError

QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")


def module_scope(node_name: str) -> Optional[str]:
    """The dotted module path torch.onnx encoded in a node or tensor name ("" for the root
    module's own ops), or None.

    Scopes nest as "/body/layer3/layer3.0/relu_1/Relu": a level that extends the one before
    ("layer3" -> "layer3.0") replaces it; a repeated call of one module gets "_1", "_2" (kept:
    the caller resolves it against the real modules)."""
    parts = [p for p in node_name.split("/") if p]
    if not node_name.startswith("/"):
        return None  # not a name torch.onnx scoped (a graph input, an ORT-made tensor)
    if len(parts) < 2:
        return ""  # an op of the exported module itself (edgekd's input normalisation)
    path: List[str] = []
    for part in parts[:-1]:  # the last part is the op ("Conv", "Relu_output_0")
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path) or None


def qdq_nodes(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node)


def diagnose(fp32_path: PathLike, int8_path: PathLike, images: Any, batch_size: int = 32) -> Dict[str, Any]:
    """Rank the INT8 model's quantized tensors by what quantizing each costs (module doc).

    `images`: (N, C, H, W) float32 model inputs (calibration or test images). Returns
    {'rows': [...worst first], 'images': N, 'quantized_tensors': count}."""
    fp32_path, int8_path = os.fspath(fp32_path), os.fspath(int8_path)
    qdq = onnx.load(int8_path, load_external_data=False)
    if qdq_nodes(qdq) == 0:
        raise CalibrationError(f"{os.path.basename(int8_path)} has no Q/DQ nodes, so there is no "
                               "INT8 layer to diagnose: quantize the model first (edgekd quantize)")
    from onnxruntime.quantization import qdq_loss_debug as debug

    images = np.ascontiguousarray(images, dtype=np.float32)
    input_name = next(i.name for i in qdq.graph.input
                      if i.name not in {t.name for t in qdq.graph.initializer})
    with tempfile.TemporaryDirectory(prefix="edgekd-diagnose-") as tmp, \
            contextlib.redirect_stdout(io.StringIO()):
        aug_fp32, aug_int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        debug.modify_model_output_intermediate_tensors(fp32_path, aug_fp32)
        debug.modify_model_output_intermediate_tensors(int8_path, aug_int8)
        batch = min(batch_size, len(images))
        float_acts = debug.collect_activations(aug_fp32, CalibSetReader(images, batch, input_name))
        qdq_acts = debug.collect_activations(aug_int8, CalibSetReader(images, batch, input_name))
    matching = debug.create_activation_matching(qdq_acts, float_acts)
    cumulative = debug.compute_activation_error(matching)

    init = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    producer = {out: n for n in qdq.graph.node for out in n.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in qdq.graph.node:
        for inp in n.input:
            consumers.setdefault(inp, []).append(n)
    rows = []
    for q in qdq.graph.node:
        tensor = q.input[0] if q.op_type == "QuantizeLinear" else None
        if tensor is None or tensor in init or tensor not in float_acts:
            continue  # weights (Q/DQ pairs on initializers) and tensors the FP32 model lacks
        scale = init.get(q.input[1]) if len(q.input) > 1 else None
        zero = init.get(q.input[2]) if len(q.input) > 2 else None
        if scale is None or np.size(scale) != 1:
            continue
        # The quantized nodes that read this tensor: through its QuantizeLinear -> DequantizeLinear.
        readers = [c.name for dq in consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"
                   for c in consumers.get(dq.output[0], []) if c.op_type not in QUANT_OPS]
        made_by = producer.get(tensor)
        x = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in float_acts[tensor]])
        rows.append({
            "tensor": tensor,
            "producer": made_by.name if made_by is not None else None,
            "producer_op": made_by.op_type if made_by is not None else "graph input",
            "consumers": sorted(set(readers)),
            "module": (module_scope(made_by.name or tensor) if made_by is not None
                       else "(model input)"),
            "scale": float(np.asarray(scale).ravel()[0]),
            "sqnr_db": _finite(_sqnr(x, _fake_quant(x, scale, zero))),
            "sqnr_vs_fp32_db": _finite((cumulative.get(tensor) or {}).get("xmodel_err")),
        })
    rows.sort(key=lambda r: (r["sqnr_db"] if r["sqnr_db"] is not None else float("inf")))
    return {"rows": rows, "images": int(len(images)), "quantized_tensors": len(rows),
            "metric": "SQNR in dB (higher is better): sqnr_db = this tensor's own quantization, "
                      "sqnr_vs_fp32_db = the INT8 model's tensor against the FP32 model's"}


def _fake_quant(x: np.ndarray, scale: Any, zero: Any) -> np.ndarray:
    """x through QuantizeLinear/DequantizeLinear with this scale and zero point (ONNX
    semantics: round half to even, saturate to the zero point's integer type)."""
    zero = np.zeros((), np.uint8) if zero is None else np.asarray(zero)
    info = np.iinfo(zero.dtype)
    s, z = float(np.asarray(scale).ravel()[0]), float(zero.ravel()[0])
    q = np.clip(np.rint(x / s) + z, info.min, info.max)
    return ((q - z) * s).astype(np.float32)


def _sqnr(x: np.ndarray, y: np.ndarray) -> float:
    noise = float(np.sum((x.astype(np.float64) - y) ** 2))
    signal = float(np.sum(x.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def _finite(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return round(value, 3) if np.isfinite(value) else None


_REPEAT = re.compile(r"_\d+$")


def scope_candidates(scope: str) -> List[str]:
    """`scope` and, for a repeated call ("relu_1"), the module it called ("relu")."""
    parts = scope.split(".")
    out = [scope]
    if _REPEAT.search(parts[-1]):
        out.append(".".join(parts[:-1] + [_REPEAT.sub("", parts[-1])]))
    return out
