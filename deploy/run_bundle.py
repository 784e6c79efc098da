"""Run a verified bundle on this device: per model an accuracy check on the bundle's real,
labelled sample images (against the labels and against the workstation's predictions), then
the latency harness; TensorRT engines are built here first and cached.

The result is one `edgekd.run-bench` document (deploy/SCHEMA.md) whose `models` hold an
`edgekd.bench` document each, with an `accuracy` object added.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np

from . import SCHEMA_VERSION
from .bench import bench_runner, write_json_atomic
from .bundle import top1
from .envinfo import capture
from .errors import DeployError, RunnerUnavailable
from .harness import MeasureSettings
from .runners import OrtRunner, TrtRunner
from .verify import BundleError, verify_bundle

RUN_SCHEMA = "edgekd.run-bench"
TRT_PRECISIONS = ("fp32", "fp16", "int8")  # for FP32 models; INT8 (Q/DQ) models build as INT8


def run_bundle(
    folder: str,
    backend: str = "onnxruntime",
    batch_sizes: Sequence[int] = (1, 8, 64),
    settings: Optional[MeasureSettings] = None,
    threads: Optional[int] = None,
    providers: Optional[Sequence[str]] = None,
    engine_cache: Optional[str] = None,
    precision: str = "fp16",
    models: Optional[Sequence[str]] = None,
    power: str = "auto",
    keep_timings: bool = True,
    sustain_s: float = 0.0,
) -> Dict[str, Any]:
    """Verify `folder` (refusing a bundle whose files do not match the manifest), then check
    and measure its models on `backend`; returns the edgekd.run-bench document. `sustain_s` > 0
    also runs each model that long at the largest batch (deploy.harness.sustain)."""
    try:
        manifest = verify_bundle(folder)
    except BundleError as e:
        raise DeployError("refusing to run %s: %s" % (folder, e)) from None
    if backend not in ("onnxruntime", "tensorrt"):
        raise DeployError("unknown backend %r: use onnxruntime or tensorrt" % backend)
    if backend == "tensorrt" and precision not in TRT_PRECISIONS:
        raise DeployError("TensorRT precision for FP32 models must be one of %s, got %r"
                          % (", ".join(TRT_PRECISIONS), precision))
    calib_dir = None
    if manifest.get("calibration"):
        calib_dir = os.path.join(folder, manifest["calibration"]["dir"])
    keys = list(models) if models else sorted(manifest["models"])
    unknown = [k for k in keys if k not in manifest["models"]]
    if unknown:
        raise DeployError("bundle has no model %s (it has %s)"
                          % (", ".join(unknown), ", ".join(sorted(manifest["models"]))))
    samples_path = os.path.join(folder, manifest["samples"]["file"])
    x = np.load(samples_path, allow_pickle=False)
    y = np.load(os.path.join(folder, manifest["samples"]["labels"]), allow_pickle=False)
    environment = capture()
    engine_cache = engine_cache or os.path.join(os.path.dirname(os.path.abspath(folder)), "engines")
    docs: Dict[str, Any] = {}
    for key in keys:
        entry = manifest["models"][key]
        onnx_path = os.path.join(folder, entry["file"])
        model_precision = entry.get("precision", "fp32")
        engine = None
        if backend == "tensorrt":
            # an entry may name its own build precision (the selection measures FP32 and
            # FP16 builds of one file in one bundle); a Q/DQ model builds as INT8
            trt_precision = ("int8" if model_precision == "int8"
                             else entry.get("trt_precision") or precision)
            if trt_precision not in TRT_PRECISIONS:
                raise DeployError("model %s asks for TensorRT precision %r: use one of %s"
                                  % (key, trt_precision, ", ".join(TRT_PRECISIONS)))
            if trt_precision == "int8" and model_precision != "int8" and calib_dir is None:
                raise DeployError("--precision int8 for the FP32 model %s needs a calibration set in "
                                  "the bundle: quantize the run (edgekd quantize) or use fp16" % key)
            engine = engine_for(onnx_path, manifest["files"][entry["file"]]["sha256"], trt_precision,
                                engine_cache, max_batch=max(batch_sizes), calib_dir=calib_dir,
                                batch_sizes=batch_sizes)
            runner = TrtRunner(engine["path"])
        else:
            # ORT's TensorRT provider (when asked for) caches its engines beside edgekd's.
            runner = OrtRunner(onnx_path, intra_op_threads=threads, providers=providers,
                               trt_cache_dir=os.path.join(engine_cache, "ort-trt"))
        try:
            predicted = np.asarray(top1(runner, x))
            doc = bench_runner(runner, onnx_path, samples_path, batch_sizes, settings, keep_timings,
                               environment=environment, power=power, sustain_s=sustain_s)
        finally:
            runner.close()
        expected = np.asarray(entry.get("workstation_predictions") or [], dtype=np.int64)
        doc["accuracy"] = {
            "samples": int(x.shape[0]),
            "top1": round(100.0 * float(np.mean(predicted == y)), 4),
            "workstation_top1": entry.get("workstation_top1"),
            # Same predictions as ONNX Runtime on the workstation, sample by sample.
            "agreement": (round(100.0 * float(np.mean(predicted == expected)), 4)
                          if expected.shape == predicted.shape else None),
        }
        doc["precision"] = model_precision if backend == "onnxruntime" else engine["precision"]
        if engine is not None:
            doc["engine"] = engine
        docs[key] = doc
    return {
        "schema": RUN_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "where": "device",
        "backend": backend,
        "bundle": {"name": manifest.get("name"), "id": manifest["manifest_sha256"],
                   "path": os.path.abspath(folder)},
        "environment": environment,
        "models": docs,
    }


def engine_for(onnx_path: str, onnx_sha256: str, precision: str, cache_dir: str,
               max_batch: int = 64, calib_dir: Optional[str] = None,
               batch_sizes: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """A TensorRT engine for `onnx_path`, from the cache when one was built for the same ONNX
    file, TensorRT version, GPU and precision (engines run only where they were built), else
    built now with deploy.trt_build and cached. With `batch_sizes` the engine has one profile
    tuned at each of them; a cached engine built for other batch sizes (or whose profile stops
    below `max_batch`) is rebuilt. The timing cache is named by TensorRT version and GPU too."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: bindings present, libnvinfer missing
        raise RunnerUnavailable("TensorRT unavailable on this device: %s (%s); on a Jetson, sudo "
                                "apt install python3-libnvinfer" % (type(e).__name__, e)) from None
    builder = importlib.import_module(__package__ + ".trt_build")
    device = _gpu_name()
    key_doc = builder.engine_key_doc(onnx_sha256, trt.__version__, device, precision)
    key = builder.engine_key(onnx_sha256, trt.__version__, device, precision)
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, key + ".engine")
    meta_path = os.path.join(cache_dir, key + ".json")
    batches = sorted({int(b) for b in batch_sizes}) if batch_sizes else None
    cached = False
    if os.path.isfile(path) and os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            cached = (int(meta.get("max_batch") or 0) >= max_batch
                      and (batches is None or meta.get("opt_batches") == batches))
        except (OSError, ValueError, AttributeError):
            cached = False  # a damaged record: rebuild rather than trust the engine beside it
    build = None
    if not cached:
        timing = hashlib.sha256(json.dumps([trt.__version__, device]).encode()).hexdigest()[:12]
        build = builder.build_engine(onnx_path, path, precision, max_batch=max_batch,
                                     calib_dir=calib_dir, opt_batches=batches,
                                     timing_cache=os.path.join(cache_dir, "timing-%s.cache" % timing))
        if not os.path.isfile(path):
            raise DeployError("deploy/trt_build.py did not write %s" % path)
        write_json_atomic(meta_path, dict(key_doc, onnx=os.path.basename(onnx_path), max_batch=max_batch,
                                          opt_batches=batches))
    return dict(key_doc, path=path, cached=cached, max_batch=max_batch, opt_batches=batches, build=build)


def _gpu_name() -> str:
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(0)
        return "%s sm_%d%d" % ((dev.name(),) + dev.compute_capability())
    except Exception:  # the runner reports the real failure when it loads the engine
        return "unknown"
