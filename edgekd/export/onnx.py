"""ONNX export of a `Classifier` (normalisation folded in: the graph takes raw [0, 1] pixels).

The graph has one input `input` (float32, NCHW, dynamic batch) and one output `logits`.
The input contract is written to the model's metadata_props so a device needs nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from edgekd.errors import EdgeKDError
from edgekd.models.registry import Classifier
from edgekd.version import __version__

INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ParityError(EdgeKDError):
    """The exported graph does not compute what the PyTorch model computes."""


# protobuf cannot serialise a message over 2 GiB; leave headroom for the graph itself.
EXTERNAL_DATA_BYTES = 1_800_000_000


def data_file(path: str | Path) -> Path:
    """Where the weights of a model too large for one file go: `<name>.onnx.data` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def _simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    try:
        import onnxslim
    except ImportError:
        raise EdgeKDError(
            "--simplify needs onnxslim: pip install 'edgekd[simplify]' (or pip install onnxslim)"
        ) from None
    before = len(proto.graph.node)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(proto)
    return slim, {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": before,
                  "nodes_after": len(slim.graph.node)}


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def export_onnx(
    model: Classifier,
    path: str | Path,
    input_size: int,
    opset: int = 18,
    metadata: dict | None = None,
    ir_version: int | None = None,
    simplify: bool = False,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> dict:
    """Export to one self-contained .onnx file (written atomically); return its contract.

    `ir_version` lowers the IR version written (see edgekd.config.targets); `simplify` runs
    onnxslim. A model whose weights exceed `external_data_bytes` keeps them in
    `<name>.onnx.data` beside the graph (protobuf's 2 GiB limit); the two travel together.
    """
    model = model.eval().cpu()
    path = Path(path)
    example = torch.rand(2, 3, input_size, input_size)
    external = _param_bytes(model) > external_data_bytes
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
    path.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written in a private folder next to `path`, then renamed into place.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp_dir:
        raw = Path(tmp_dir) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                torch.onnx.export(
                    model, (example,), str(raw), dynamo=True, verbose=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                    external_data=external,
                )
            else:
                torch.onnx.export(
                    model, (example,), str(raw), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
        proto = onnx.load(str(raw))  # external weights, if any, are read into memory
        actual = _opset(proto)
        if actual != opset:
            raise EdgeKDError(
                f"torch {torch.__version__} wrote opset {actual}, not the requested {opset}: "
                "choose an opset between 13 and 17, or 18 and later"
            )
        if simplify:
            proto, contract["simplified"] = _simplify(proto)
            if _opset(proto) != opset:
                raise EdgeKDError(f"onnxslim changed the opset to {_opset(proto)}: export without --simplify")
        if ir_version is not None:
            proto.ir_version = ir_version
        contract["ir_version"] = int(proto.ir_version)
        contract["external_data"] = data_file(path).name if external else None
        del proto.metadata_props[:]
        for key, value in contract.items():
            entry = proto.metadata_props.add()
            entry.key = key
            entry.value = value if isinstance(value, str) else json.dumps(value)
        proto.producer_name = "edgekd"
        proto.producer_version = __version__
        staged = Path(tmp_dir) / path.name
        if external:
            onnx.save(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=data_file(path).name, size_threshold=1024)
        else:
            onnx.save(proto, str(staged))
        onnx.checker.check_model(str(staged), full_check=True)  # by path: works past 2 GiB
        if external:
            os.replace(Path(tmp_dir) / data_file(path).name, data_file(path))
        else:
            data_file(path).unlink(missing_ok=True)  # a stale sidecar of an earlier export
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(staged, path)
    return contract


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


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
