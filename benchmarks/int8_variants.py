"""INT8 variants of trained students: FP32 vs PTQ vs PTQ + auto-fallback vs quantization-aware
distillation (QAD), accuracy and ONNX Runtime CPU latency, and INT8 vs FP32 for the teacher.

    python benchmarks/int8_variants.py RUN_DIR [RUN_DIR ...] [--qat-epochs 2] [--out JSON]

Each run directory (a finished `edgekd compress` run) is copied to --work first, so nothing of
it changes. The accuracy budget is half the plain PTQ drop (a budget PTQ misses), or
--max-drop. Accuracy is the quantized graph's exact Q/DQ arithmetic (the gate; what TensorRT,
ARM and VNNI/AMX kernels compute) and this CPU's ONNX Runtime kernels; latency is p50 at
batch 1 and 64, all cores, short runs, measured in one process one after the other, so
compare ratios within one run of this script. The CPU and its INT8 flags are recorded.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def latency(path: Path, batches=(1, 64)) -> dict:
    from deploy.bench import run_bench
    from deploy.harness import MeasureSettings

    settings = MeasureSettings(warmup_s=0.3, warmup_iters=3, min_iters=20, min_s=1.5, max_s=15.0)
    doc = run_bench(str(path), "onnxruntime", None, list(batches), settings, keep_timings=False,
                    power="off")
    return {f"batch_{r['batch_size']}": round(r["latency_ms"]["p50"], 3) for r in doc["results"]}


def variant(info: dict, path: Path) -> dict:
    a, h = info["accuracy"], info["host_kernels"]
    fb = info.get("fallback") or {}
    return {"top1_exact": round(a["int8_top1"], 2), "drop_pp_exact": round(a["drop_pp"], 2),
            "top1_this_cpu": round(h["int8_top1"], 2), "drop_pp_this_cpu": round(h["drop_pp"], 2),
            "kept_fp32": fb.get("kept_fp32", []), "quantized_nodes": info["quantized_nodes"],
            **({"source_fp32_top1": round(a["source_fp32_top1"], 2)} if "source_fp32_top1" in a else {}),
            "latency_p50_ms": latency(path)}


def bench_run(src: Path, work: Path, qat_epochs: int, max_drop: float | None) -> dict:
    from calibration import evaluate_onnx
    from edgekd.export.quantize import QuantizeError, pixels
    from edgekd.pipeline.standalone import open_run, quantize_run

    run = work / src.name
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("ig", "tb", "ckpt"))
    ctx = open_run(run)
    x, y = pixels(ctx.data.test.images), ctx.data.test.labels.numpy()
    report = json.loads((run / "report.json").read_text())
    out: dict = {"run": str(src), "dataset": ctx.data.name, "test_images": int(len(y)),
                 "student": report["student"]["arch"], "teacher": report["teacher"]["arch"],
                 "method": report["method"]}
    t0 = time.perf_counter()
    fp32 = {"top1": round(evaluate_onnx(run / "student.onnx", x, y)["top1"], 2),
            "latency_p50_ms": latency(run / "student.onnx")}
    ptq = quantize_run(run, max_drop=100)
    variants = {"fp32": fp32, "ptq": variant(ptq, run / "student.int8.onnx")}
    budget = max_drop if max_drop is not None else round(max(ptq["accuracy"]["drop_pp"], 0) / 2, 3)
    out["max_drop_pp"] = budget
    try:
        quantize_run(run, max_drop=budget)
        out["ptq_meets_budget"] = True
    except QuantizeError:
        out["ptq_meets_budget"] = False
    for name, kwargs in (("ptq_fallback", {"auto_fallback": True}),
                         ("qad", {"qat_epochs": qat_epochs, "qat_teacher": "student"}),
                         ("qad_fallback", {"qat_epochs": qat_epochs, "qat_teacher": "student",
                                           "auto_fallback": True}),
                         ("ptq_reduce_range", {"reduce_range": True})):
        try:
            # Plain QAD and 7-bit weights are measured, not gated; the fallbacks chase the budget.
            info = quantize_run(run, max_drop=100 if name in ("qad", "ptq_reduce_range") else budget,
                                **kwargs)
            variants[name] = variant(info, run / "student.int8.onnx")
            variants[name]["meets_budget"] = info["accuracy"]["drop_pp"] <= budget
        except QuantizeError as e:
            variants[name] = {"error": str(e)}
        print(f"  {src.name} {name}: {json.dumps(variants[name])[:160]}", flush=True)
    out["variants"] = variants
    teacher_int8 = quantize_run(run, max_drop=100, model="teacher")
    out["teacher"] = {"fp32_latency_p50_ms": latency(run / "teacher.onnx"),
                      "int8_latency_p50_ms": latency(run / "teacher.int8.onnx"),
                      "int8_drop_pp_exact": round(teacher_int8["accuracy"]["drop_pp"], 2),
                      "int8_drop_pp_this_cpu": round(teacher_int8["host_kernels"]["drop_pp"], 2)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-int8-variants"))
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--max-drop", type=float, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_variants.json")
    args = ap.parse_args()
    import onnxruntime
    import torch

    from deploy.envinfo import cpu_model, int8_isa

    args.work.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "int8_variants", "command": "python benchmarks/int8_variants.py "
           + " ".join(sys.argv[1:]),
           "machine": {"cpu": cpu_model(), "int8_isa": int8_isa(), "cores": torch.get_num_threads(),
                       "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                       "ort_providers": onnxruntime.get_available_providers(), "torch": torch.__version__},
           "qat": {"epochs": args.qat_epochs, "teacher": "the FP32 student (--qat-teacher student)"},
           "runs": []}
    for run in args.runs:
        print(f"{run}", flush=True)
        doc["runs"].append(bench_run(run.resolve(), args.work, args.qat_epochs, args.max_drop))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
