"""ONNX export of a `Classifier` (normalisation folded in: the graph takes raw [0, 1] pixels).

The graph has one input `input` (float32, NCHW, dynamic batch) and one output `logits`.
The input contract is written to the model's metadata_props so a device needs nothing else.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from edgekd import __version__
from edgekd.errors import EdgeKDError
from edgekd.io import atomic_path
from edgekd.models.registry import Classifier

INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ParityError(EdgeKDError):
    """The exported graph does not compute what the PyTorch model computes."""


def export_onnx(
    model: Classifier,
    path: str | Path,
    input_size: int,
    opset: int = 18,
    metadata: dict | None = None,
) -> dict:
    """Export to a single self-contained .onnx file (written atomically); return its contract."""
    model = model.eval().cpu()
    example = torch.rand(2, 3, input_size, input_size)
    contract = {
        "layout": "NCHW",
        "dtype": "float32",
        "input_shape": ["batch", 3, input_size, input_size],
        "value_range": [0.0, 1.0],
        "color": "RGB",
        "normalization": "folded into the graph",
        "mean": [round(v, 6) for v in model.mean.flatten().tolist()],
        "std": [round(v, 6) for v in model.std.flatten().tolist()],
        "opset": opset,
        "edgekd_version": __version__,
        **(metadata or {}),
    }
    # torch's dynamo exporter emits opset >= 18 only (it silently keeps 18 when a down-
    # conversion fails); older runtimes (TensorRT 8.5 on JetPack 5) need <= 17, which the
    # TorchScript exporter still writes exactly.
    dynamo = opset >= 18
    contract["exporter"] = "torch.onnx dynamo" if dynamo else "torch.onnx torchscript"
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=True, verbose=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                external_data=False,
            )
        else:
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        proto = onnx.load(str(tmp))
        actual = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        if actual != opset:
            raise EdgeKDError(
                f"torch {torch.__version__} wrote opset {actual}, not the requested {opset}: "
                "choose an opset between 13 and 17, or 18 and later"
            )
        for key, value in contract.items():
            entry = proto.metadata_props.add()
            entry.key = key
            entry.value = value if isinstance(value, str) else json.dumps(value)
        proto.producer_name = "edgekd"
        proto.producer_version = __version__
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return contract


def read_contract(path: str | Path) -> dict:
    """The metadata written by `export_onnx`, values JSON-decoded where possible."""
    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


@torch.no_grad()
def parity_check(
    model: Classifier,
    onnx_path: str | Path,
    images: torch.Tensor,
    atol: float = 1e-3,
    min_agreement: float = 99.0,
    batch_size: int = 256,
) -> dict:
    """Run PyTorch and ONNX Runtime on the same real uint8 images; raise ParityError on drift.

    The logit tolerance is relative to the logits' range, so it means the same for any model.
    """
    import onnxruntime as ort

    model = model.eval().cpu()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    max_diff, agree, scale = 0.0, 0, 0.0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float().div(255.0)
        ref = model(x).numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        scale = max(scale, float(np.abs(ref).max()))
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
    n = len(images)
    result = {
        "images": n,
        "max_abs_diff": max_diff,
        "logit_scale": scale,
        "top1_agreement": 100.0 * agree / max(n, 1),
        "atol": atol,
    }
    limit = atol * max(1.0, scale)
    if max_diff > limit or result["top1_agreement"] < min_agreement:
        raise ParityError(
            f"ONNX export of {Path(onnx_path).name} disagrees with PyTorch: max |diff| "
            f"{max_diff:.3g} (limit {limit:.3g}), top-1 agreement {result['top1_agreement']:.2f} % "
            f"(min {min_agreement} %) on {n} images: report this with the model name and opset"
        )
    return result
