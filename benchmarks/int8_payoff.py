"""Where INT8 pays on this CPU: FP32 vs INT8 (ONNX Runtime static QDQ, per-channel, MinMax)
latency of the budget students, the teachers and two torchvision networks at 32, 64, 128 and
224 px, batch 1 and 64, with the CPU's INT8 instructions recorded.

Latency does not depend on the weights, so every model is exported with random weights
(seed 0) and calibrated on 32 uniform-noise images. For each (model, size, batch) the FP32 and
INT8 sessions run in alternating blocks (FP32, INT8, FP32, INT8), each block its own warm-up
and timed runs, and the figure is the lower of each precision's two block medians: spinning
ONNX Runtime thread pools of two live sessions otherwise fight over the cores. Also recorded,
to explain a loss: the operators of each optimised graph (ORT_ENABLE_ALL, as the harness runs
it), i.e. how many convolutions ONNX Runtime fused into integer kernels (QLinearConv) and how
many Q/DQ pairs it left around FP32 ones (a depthwise convolution it has no integer kernel for
on this CPU, a tiny spatial size where the (de)quantisation costs more than the arithmetic).

Resumable: results are written after every model and size; a rerun skips what is there.

    python benchmarks/int8_payoff.py [--models a,b] [--sizes 32,64] [--out JSON]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {  # name: why it is here
    "resnet8_cifar": "the student --speedup 10 picks for the resnet20_cifar teacher (CIFAR-10 benchmark)",
    "resnet8_cifar_w0.5": "a budget student of the digits default run's family",
    "mbv2_cifar_w0.5": "a depthwise budget student",
    "resnet20_cifar": "the CIFAR-10 benchmark's teacher",
    "mbv2_cifar": "the papers' teacher",
    "resnet18": "torchvision, ImageNet strides",
    "mobilenet_v3_small": "torchvision, ImageNet strides, depthwise",
}
SIZES = (32, 64, 128, 224)
BATCHES = (1, 64)


def settings():
    from deploy.harness import MeasureSettings

    return MeasureSettings(warmup_s=0.3, warmup_iters=1, min_iters=8, min_s=0.8, max_s=6.0)


def export_pair(name: str, size: int, folder: Path) -> tuple[Path, Path, dict]:
    import torch

    from calibration import quantize_static_qdq
    from edgekd.export.onnx import export_onnx
    from edgekd.models.profile import count_macs
    from edgekd.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    fp32, int8 = folder / f"{name}-{size}.onnx", folder / f"{name}-{size}.int8.onnx"
    export_onnx(model, fp32, size, 17, {"arch": name, "weights": "random"})
    calib = np.random.default_rng(0).random((32, 3, size, size), dtype=np.float32)
    quantize_static_qdq(fp32, int8, calib, method="minmax")
    return fp32, int8, {"macs": count_macs(model, size)}


def optimised_ops(path: Path, folder: Path, threads: int) -> dict:
    """Operator counts of the graph ONNX Runtime runs (ORT_ENABLE_ALL, this CPU)."""
    import onnx
    import onnxruntime as ort

    out = folder / (path.stem + ".opt.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # not the warning that the saved graph is for this CPU only
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(out)).graph
    counts = collections.Counter(n.op_type for n in graph.node)
    # A convolution left in FP32 between a DequantizeLinear and a QuantizeLinear: ORT found no
    # integer kernel for it (grouped / depthwise on x86) and pays the (de)quantisation around it.
    fp32_convs = sum(1 for n in graph.node if n.op_type in ("Conv", "FusedConv"))
    grouped = sum(1 for n in graph.node if n.op_type in ("Conv", "FusedConv")
                  and any(a.name == "group" and a.i > 1 for a in n.attribute))
    keep = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "QuantizeLinear",
            "DequantizeLinear", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearMul", "QLinearSigmoid")
    return {"nodes": len(graph.node), "fp32_convs": fp32_convs, "fp32_grouped_convs": grouped,
            **{k: counts[k] for k in keep if counts.get(k)}}


def measure_pair(fp32: Path, int8: Path, size: int, batch: int, threads: int) -> dict:
    from deploy.harness import measure
    from deploy.runners import OrtRunner

    inputs = np.random.default_rng(1).random((max(batch, 8), 3, size, size), dtype=np.float32)
    medians = {"fp32": [], "int8": []}
    for _ in range(2):  # blocks: fp32, int8, fp32, int8 (one live session at a time)
        for precision, path in (("fp32", fp32), ("int8", int8)):
            runner = OrtRunner(str(path), intra_op_threads=threads)
            r = measure(runner, inputs, batch, settings(), keep_timings=False)
            medians[precision].append(r["latency_ms"]["p50"])
            del runner
    f, i = min(medians["fp32"]), min(medians["int8"])
    return {"fp32_ms": round(f, 4), "int8_ms": round(i, 4), "int8_speedup": round(f / i, 3),
            "blocks_ms": {k: [round(v, 4) for v in vs] for k, vs in medians.items()}}


def main() -> int:
    from deploy.envinfo import capture, int8_isa
    from deploy.runners import default_intra_op_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/int8_payoff.json")
    args = ap.parse_args()
    threads = args.threads or default_intra_op_threads()
    import onnxruntime as ort

    env = capture()
    cpu = env.get("cpu") or {}
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if doc and doc.get("machine", {}).get("cpu") != cpu.get("model"):
        print(f"{args.out} was measured on {doc['machine'].get('cpu')}: pass another --out", file=sys.stderr)
        return 2
    doc.update({"benchmark": "int8_payoff", "command": "python benchmarks/int8_payoff.py " + " ".join(sys.argv[1:]),
                "onnxruntime": ort.__version__, "threads": threads,
                "quantization": "ONNX Runtime static QDQ, per-channel weights, MinMax, 32 noise images",
                "notes": "p50 per block, the lower of two alternating blocks per precision; random weights",
                "machine": {"cpu": cpu.get("model"), "cores": cpu.get("usable_cores"), "int8_flags": int8_isa()},
                "models": {k: v for k, v in MODELS.items() if k in args.models.split(",")}})
    rows = {(r["model"], r["size"], r["batch"]): r for r in doc.get("rows", [])}
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                if all((name, size, b) in rows for b in batches):
                    continue
                t0 = time.perf_counter()
                fp32, int8, info = export_pair(name, size, folder)
                ops = {"fp32": optimised_ops(fp32, folder, threads), "int8": optimised_ops(int8, folder, threads)}
                for batch in batches:
                    r = {"model": name, "size": size, "batch": batch, **info,
                         **measure_pair(fp32, int8, size, batch, threads), "ops": ops}
                    rows[(name, size, batch)] = r
                    print(f"{name:20s} {size:4d} px  batch {batch:3d}  fp32 {r['fp32_ms']:9.3f} ms  "
                          f"int8 {r['int8_ms']:9.3f} ms  {r['int8_speedup']:5.2f}x", flush=True)
                for p in folder.iterdir():
                    p.unlink()
                doc["rows"] = sorted(rows.values(), key=lambda r: (list(MODELS).index(r["model"])
                                                                   if r["model"] in MODELS else 99,
                                                                   r["size"], r["batch"]))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                tmp_out = args.out.with_suffix(".tmp")
                tmp_out.write_text(json.dumps(doc, indent=1) + "\n")
                tmp_out.replace(args.out)
                print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
