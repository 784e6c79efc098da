"""`edgekd bench` as a library: deploy/'s harness on ONNX models (ONNX Runtime) and on
checkpoints (PyTorch eager), and the teacher-vs-student comparison behind the papers'
"140 ms -> 13 ms" claim. Returns documents (schemas in deploy/SCHEMA.md); never prints.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy.bench import bench_runner
from deploy.envinfo import capture
from deploy.errors import DeployError, RunnerUnavailable
from deploy.harness import MeasureSettings
from deploy.runners import OrtRunner
from edgekd.errors import BenchError, RunDirError
from edgekd.runfiles import REPORT, SAMPLES

SET_SCHEMA = "edgekd.bench-set"
COMPARE_SCHEMA = "edgekd.latency-compare"
SCHEMA_VERSION = 1

# Hernandez, Chang & Nordling 2025: "inference time falls from 140 ms to 13 ms", per batch of
# 64 CIFAR-10 images (see docs: how the teacher was timed is unclear).
CLAIM = {"teacher_ms": 140.0, "student_ms": 13.0, "batch": 64, "speedup": round(140.0 / 13.0, 2),
         "source": "Hernandez, Chang & Nordling 2025 (arXiv 2506.14440): 140 ms -> 13 ms per "
                   "batch of 64 CIFAR-10 images, teacher vs the 4.1x truncated student"}

Progress = Callable[[str], None]


def precision_of(path: str | Path) -> str:
    """'int8' for a quantized export (`*.int8.onnx`, as `edgekd quantize` names them), else 'fp32'."""
    return "int8" if ".int8." in Path(path).name else "fp32"


def check_model_path(path: str | Path) -> Path:
    """`path` if it is a file edgekd bench can measure, else a one-line BenchError."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"model not found: {p}")
    if p.suffix not in (".onnx", ".pt"):
        raise BenchError(f"{p}: edgekd bench measures .onnx models (ONNX Runtime) and .pt checkpoints "
                         "(PyTorch eager); build TensorRT engines on the device with edgekd deploy")
    return p


def make_runner(path: str | Path, threads: int | None) -> Any:
    """ONNX Runtime (CPU, `threads` intra-op) for .onnx, PyTorch eager for an edgekd .pt."""
    p = check_model_path(path)
    if p.suffix == ".onnx":
        try:
            return OrtRunner(str(p), intra_op_threads=threads)
        except (DeployError, RunnerUnavailable) as e:
            raise BenchError(str(e)) from None
    from edgekd.bench.torch_runner import TorchRunner

    return TorchRunner(p, threads)


def default_inputs(path: Path, runner: Any) -> str | None:
    """The samples.npy beside a model (a run directory's real test images) when it fits it."""
    candidate = path.parent / SAMPLES
    if not candidate.is_file():
        return None
    shape = np.load(candidate, mmap_mode="r", allow_pickle=False).shape
    want = runner.input_shape
    fits = len(shape) == len(want) and all(w in (None, s) for w, s in zip(want[1:], shape[1:], strict=True))
    return str(candidate) if fits else None


def bench_model(path: str | Path, batch_sizes: Sequence[int], threads: int | None = None,
                settings: MeasureSettings | None = None, inputs: str | None = None,
                environment: dict | None = None, keep_timings: bool = True) -> dict:
    """One entry of an edgekd.bench-set: label, path, backend, precision and the edgekd.bench
    document of `path` measured at each batch size."""
    p = Path(path)
    runner = make_runner(p, threads)
    try:
        feed = inputs if inputs is not None else default_inputs(p, runner)
        doc = bench_runner(runner, str(p), feed, batch_sizes, settings, keep_timings,
                           environment=environment, power="off")
    except (DeployError, RunnerUnavailable) as e:
        raise BenchError(str(e)) from None
    finally:
        runner.close()
    backend = doc["runner"]["backend"]
    precision = precision_of(p) if backend == "onnxruntime" else "fp32"
    return {"label": f"{p.name} ({'torch eager' if backend == 'torch' else backend})",
            "path": str(p), "backend": backend, "precision": precision, "document": doc}


def bench_models(paths: Sequence[str | Path], batch_sizes: Sequence[int] = (1,),
                 threads: int | None = None, settings: MeasureSettings | None = None,
                 inputs: str | None = None, progress: Progress | None = None) -> dict:
    """The edgekd.bench-set document of several models measured one after the other."""
    if not paths:
        raise BenchError("give at least one model (.onnx or .pt), or --compare RUN_DIR")
    for p in paths:  # every path checked before minutes of measuring, not after
        check_model_path(p)
    threads = threads or len(os.sched_getaffinity(0))
    environment = capture()
    entries = []
    for p in paths:
        if progress:
            progress(f"{p}: batch {', '.join(map(str, batch_sizes))}, {threads} threads")
        entries.append(bench_model(p, batch_sizes, threads, settings, inputs, environment))
    return {"schema": SET_SCHEMA, "schema_version": SCHEMA_VERSION, "created": _now(),
            "threads": threads, "environment": environment, "entries": entries}


def _model_facts(run: Path) -> dict[str, dict]:
    report = run / REPORT
    if report.is_file():
        doc = json.loads(report.read_text())
        return {role: {k: doc[role][k] for k in ("arch", "params", "macs", "accuracy") if k in doc[role]}
                for role in ("teacher", "student")}
    from edgekd.models.profile import count_macs, count_params
    from edgekd.train import checkpoint

    facts = {}
    for role in ("teacher", "student"):
        model, meta = checkpoint.load_model(run / f"{role}.pt", what=role)
        size = meta.get("input_size") or 32
        facts[role] = {"arch": meta["arch"], "params": count_params(model), "macs": count_macs(model, size)}
    return facts


def compare_run(run_dir: str | Path, batch_sizes: Sequence[int] = (64, 1), threads: int | None = None,
                settings: MeasureSettings | None = None, keep_timings: bool = True,
                progress: Progress | None = None) -> dict:
    """Teacher vs student of a run on this machine, per backend (PyTorch eager from the .pt
    files, ONNX Runtime from the .onnx files, INT8 when quantized exports exist) and batch
    size, with the speed-up, its conservative 95 % interval, the MAC ratio and the claim."""
    from edgekd.pipeline.standalone import open_run
    from edgekd.runfiles import ensure_samples

    run = Path(run_dir)
    pairs = [("torch", "fp32", "fp32", "{}.pt", "{}.pt"),
             ("onnxruntime", "fp32", "fp32", "{}.onnx", "{}.onnx"),
             ("onnxruntime", "int8", "int8", "{}.int8.onnx", "{}.int8.onnx"),
             ("onnxruntime", "fp32", "int8", "{}.onnx", "{}.int8.onnx")]
    for need in ("teacher.pt", "student.pt", "teacher.onnx", "student.onnx"):
        if not (run / need).is_file():
            raise RunDirError(f"{run} has no {need}: pass a finished run (edgekd compress, edgekd export)")
    samples, _ = ensure_samples(run, open_data=lambda: open_run(run).data)
    threads = threads or len(os.sched_getaffinity(0))
    environment = capture()
    documents: dict[str, dict] = {}
    rows = []
    for backend, t_prec, s_prec, t_name, s_name in pairs:
        files = {"teacher": run / t_name.format("teacher"), "student": run / s_name.format("student")}
        if not all(f.is_file() for f in files.values()):
            continue
        for role, f in files.items():
            key = f"{backend}/{precision_of(f) if backend == 'onnxruntime' else 'fp32'}/{role}"
            if key not in documents:
                if progress:
                    progress(f"{role} {f.name} ({backend}): batch {', '.join(map(str, batch_sizes))}, "
                             f"{threads} threads")
                documents[key] = bench_model(f, batch_sizes, threads, settings, str(samples),
                                             environment, keep_timings)["document"]
        t_doc = documents[f"{backend}/{t_prec}/teacher"]
        s_doc = documents[f"{backend}/{s_prec}/student"]
        for t_res, s_res in zip(t_doc["results"], s_doc["results"], strict=True):
            rows.append(_row(backend, t_prec, s_prec, t_res, s_res))
    facts = _model_facts(run)
    return {
        "schema": COMPARE_SCHEMA, "schema_version": SCHEMA_VERSION, "created": _now(),
        "run": str(run), "threads": threads, "claim": CLAIM,
        "teacher": facts["teacher"], "student": facts["student"],
        "mac_ratio": round(facts["teacher"]["macs"] / facts["student"]["macs"], 3),
        "param_ratio": round(facts["teacher"]["params"] / facts["student"]["params"], 3),
        "rows": rows, "environment": environment, "documents": documents,
    }


def _row(backend: str, t_prec: str, s_prec: str, t: dict, s: dict) -> dict:
    tl, sl = t["latency_ms"], s["latency_ms"]
    (t_lo, t_hi), (s_lo, s_hi) = tl["median_ci95"], sl["median_ci95"]
    b = t["batch_size"]
    return {
        "backend": backend, "teacher_precision": t_prec, "student_precision": s_prec, "batch": b,
        "teacher_p50_ms": tl["p50"], "student_p50_ms": sl["p50"],
        "teacher_p90_ms": tl["p90"], "student_p90_ms": sl["p90"],
        "teacher_ms_per_image": tl["p50"] / b, "student_ms_per_image": sl["p50"] / b,
        "teacher_throughput_ips": t["throughput_ips"], "student_throughput_ips": s["throughput_ips"],
        "speedup": tl["p50"] / sl["p50"],
        # Conservative: the slowest teacher median over the fastest student median, and back.
        "speedup_ci95": [t_lo / s_hi, t_hi / s_lo],
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
