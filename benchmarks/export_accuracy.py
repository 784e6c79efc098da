"""Export and INT8 accuracy of a run's teacher and student, and ONNX Runtime latency FP32 vs INT8.

For each model: FP32 ONNX (cpu target) vs PyTorch over the whole test split (top-1 agreement,
max |logit difference|), INT8 QDQ accuracy drop for every calibration method (256 stratified
training images, seed 0), and ONNX Runtime CPU latency of FP32 and the default (minmax) INT8
at batch 1 and 64 with deploy/'s harness. Results with the machine description go to
benchmarks/results/export_accuracy_<dataset>.json.

    python benchmarks/export_accuracy.py                  # trains the digits default run first
    python benchmarks/export_accuracy.py --run runs/X     # an existing run (teacher + student)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deploy.bench import run_bench
from deploy.envinfo import capture
from deploy.harness import MeasureSettings
from edgekd.config.targets import resolve_opset
from edgekd.export.onnx import export_onnx
from edgekd.export.quantize import pixels, quantize_onnx, write_run_calibset
from edgekd.io import write_json
from edgekd.pipeline.context import load_run_model
from edgekd.pipeline.standalone import open_run

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("minmax", "entropy", "percentile")


@torch.no_grad()
def torch_logits(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="Run directory (default: train the digits default).")
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
    args = ap.parse_args()
    import onnxruntime as ort

    tmp = Path(tempfile.mkdtemp(prefix="export-accuracy-"))
    run = args.run
    if run is None:
        run = tmp / "run"
        subprocess.run([sys.executable, "-m", "edgekd", "compress", "--method", "kd", "--no-bench",
                        "--out", str(run)], check=True)
    ctx = open_run(run)
    data = ctx.data
    x, y = pixels(data.test.images), data.test.labels.numpy()
    calib = tmp / "calib"
    write_run_calibset(calib, data, args.calib_size, seed=0)
    np.save(tmp / "samples.npy", x[:128])
    opset, ir = resolve_opset("cpu")
    threads = args.threads or capture()["cpu"].get("usable_cores") or 1
    settings = MeasureSettings(warmup_s=0.5, warmup_iters=5, min_s=2.0, min_iters=20)
    models = {}
    for role in ("teacher", "student"):
        model = load_run_model(ctx, role)
        fp32 = tmp / f"{role}.onnx"
        export_onnx(model, fp32, data.input_size, opset, {"role": role}, ir_version=ir)
        ref = torch_logits(model, x)
        sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
        got = np.concatenate([sess.run(None, {"input": x[i:i + 256]})[0] for i in range(0, len(x), 256)])
        entry = {
            "arch": getattr(ctx.cfg, role).arch,
            "params": int(sum(p.numel() for p in model.parameters())),
            "fp32_vs_pytorch": {
                "images": len(x),
                "top1_agreement_pct": round(100.0 * float(np.mean(ref.argmax(1) == got.argmax(1))), 4),
                "max_abs_logit_diff": float(np.abs(ref - got).max()),
                "pytorch_top1_pct": round(100.0 * float(np.mean(ref.argmax(1) == y)), 4),
            },
            "int8": {},
        }
        for method in METHODS:
            t0 = time.perf_counter()
            info = quantize_onnx(fp32, tmp / f"{role}.{method}.int8.onnx", calib, x, y, method,
                                 max_drop=100.0)
            acc = info["accuracy"]
            entry["int8"][method] = {
                "fp32_top1_pct": round(acc["fp32_top1"], 4), "int8_top1_pct": round(acc["int8_top1"], 4),
                "drop_pp": round(acc["drop_pp"], 4), "agreement_pct": round(acc["agreement"], 4),
                "quantize_s": round(time.perf_counter() - t0, 1),
                "size_fp32_bytes": info["size_fp32_bytes"], "size_int8_bytes": info["size_int8_bytes"],
            }
        latency = {}
        for label, path in (("fp32", fp32), ("int8_minmax", tmp / f"{role}.minmax.int8.onnx")):
            doc = run_bench(str(path), "onnxruntime", str(tmp / "samples.npy"), [1, 64], settings,
                            {"intra_op_threads": threads}, keep_timings=False, power="off")
            latency[label] = {f"batch_{r['batch_size']}": {
                "p50_ms": round(r["latency_ms"]["p50"], 4), "p90_ms": round(r["latency_ms"]["p90"], 4),
                "throughput_ips": round(r["throughput_ips"], 1)} for r in doc["results"]}
        latency["int8_speedup_p50"] = {b: round(latency["fp32"][b]["p50_ms"] / latency["int8_minmax"][b]["p50_ms"], 2)
                                       for b in ("batch_1", "batch_64")}
        entry["ort_latency"] = latency
        models[role] = entry
        print(role, json.dumps(entry["fp32_vs_pytorch"]), {m: e["drop_pp"] for m, e in entry["int8"].items()},
              latency["int8_speedup_p50"], flush=True)
    env = capture()
    doc = {
        "benchmark": "export_accuracy",
        "dataset": data.name,
        "test_images": len(x),
        "run": str(run),
        "onnx": {"target": "cpu", "opset": opset, "ir_version": ir},
        "calibration": {"images": args.calib_size, "seed": 0, "source": "stratified training split"},
        "ort_threads": threads,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "models": models,
        "acceptance": {
            "fp32_agreement_ge_99_9": all(m["fp32_vs_pytorch"]["top1_agreement_pct"] >= 99.9 for m in models.values()),
            "max_abs_logit_diff_le_1e_4": all(m["fp32_vs_pytorch"]["max_abs_logit_diff"] <= 1e-4 for m in models.values()),
            "int8_default_drop_le_1pp": all(m["int8"]["minmax"]["drop_pp"] <= 1.0 for m in models.values()),
        },
        "environment": env,
    }
    out = RESULTS / f"export_accuracy_{data.name}.json"
    write_json(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
