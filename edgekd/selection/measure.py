"""Measure combinations on a target: an architecture at a precision and an input size, each
exported once with random weights (latency does not depend on their values), INT8-quantized
when asked, every one the cache does not already hold put into one bundle, and that bundle run
on the target through the same probe/ship/verify/run path as `edgekd deploy`.

A combination at a lower input size than the run's is the model that downscales inside (see
`edgekd.models.registry.Classifier`), fed the run's images, as it is deployed; FP16 is a
TensorRT build of the FP32 file."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from deploy import SCHEMA_VERSION
from deploy.bundle import build_bundle
from deploy.errors import DeployError, RunnerUnavailable
from deploy.harness import MeasureSettings
from edgekd.errors import SelectError, ShipError
from edgekd.models.profile import count_macs, count_params
from edgekd.models.registry import create_model
from edgekd.selection.cache import LatencyCache, environment_fingerprint
from edgekd.ship.remote import DeployOptions, connect, manifest_bytes, run_on_device
from edgekd.version import __version__

Progress = Callable[[str, str], None]
# An architecture, a precision (fp32, fp16, int8) and the size it computes at (None: the
# run's own input size).
Item = tuple[str, str, "int | None"]

AGAIN = ".again"  # the bundle key of a bracketed model's second run
LATENCY_KEYS = ("p50", "p90", "p99", "mean", "sd", "median_ci95", "p90_ci95", "p99_ci95")

# Short enough that 30 candidates take about a minute on a 2-core CPU, long enough for a
# stable median at ms scale (the CI of the median is reported beside every figure).
SELECT_SETTINGS = MeasureSettings(warmup_s=0.2, warmup_iters=3, min_iters=15, min_s=0.5, max_s=15.0)


@dataclass(frozen=True)
class Spec:
    """What is measured: the models' input and classes, and how they are exported."""

    input_size: int
    num_classes: int = 10
    batch: int = 64
    opset: int = 17
    ir_version: int | None = None
    for_tensorrt: bool = False


def arch_id(name: str, num_classes: int) -> str:
    """A hash of the architecture's structure (module tree and parameter shapes), so a changed
    family definition under the same name is re-measured."""
    model = create_model(name, num_classes)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    return hashlib.sha256(repr((repr(model), shapes)).encode()).hexdigest()[:16]


def label(name: str, precision: str, size: int | None = None) -> str:
    """The key of a measurement: the architecture's name, `.<size>px` when it computes at a
    lower size than the run's, `.<precision>` unless FP32 (resnet8_cifar.24px.int8)."""
    return name + (f".{size}px" if size is not None else "") + ("" if precision == "fp32" else f".{precision}")


def _model(name: str, spec: Spec, size: int | None):
    return create_model(name, spec.num_classes, input_size=size)


def describe_arch(name: str, spec: Spec, size: int | None = None) -> dict:
    """Parameters and MACs of `name` computing at `size` (the run's by default)."""
    model = _model(name, spec, size)
    return {"arch": name, "params": count_params(model), "macs": count_macs(model, spec.input_size),
            "input_size": size or spec.input_size}


def export_random(name: str, precision: str, spec: Spec, folder: Path,
                  calib: np.ndarray | None, size: int | None = None) -> dict:
    """Random-weight ONNX of `name` (downscaling to `size` inside) in `folder`, and its INT8
    QDQ copy for precision int8; returns {'path', 'precision'} of the file to measure."""
    from edgekd.export.onnx import export_onnx

    torch.manual_seed(0)
    model = _model(name, spec, size).eval()
    stem = label(name, "fp32", size)
    fp32 = folder / f"{stem}.onnx"
    export_onnx(model, fp32, spec.input_size, spec.opset, {"arch": name, "role": "candidate",
                "weights": "random"}, ir_version=spec.ir_version)
    if precision != "int8":
        return {"path": str(fp32), "precision": "fp32"}
    from calibration import quantize_static_qdq

    int8 = folder / f"{stem}.int8.onnx"
    quantize_static_qdq(fp32, int8, calib, method="minmax", for_tensorrt=spec.for_tensorrt)
    return {"path": str(int8), "precision": "int8"}


def measure_archs(
    items: Sequence[Item],
    spec: Spec,
    deploy: DeployOptions,
    work_dir: str | Path,
    cache: LatencyCache,
    samples: np.ndarray | None = None,
    calib: np.ndarray | None = None,
    settings: MeasureSettings = SELECT_SETTINGS,
    progress: Progress | None = None,
    on_export: Callable[[int, int, str], None] | None = None,
    bracket: Sequence[str] = (),
) -> dict[str, dict]:
    """Latency of every (architecture, precision, size) in `items` on `deploy.target` at
    `spec.batch`: from the cache where it holds the figure, otherwise measured now, all in one
    bundle. Returns label(name, precision, size) -> {arch, params, macs, input_size, precision,
    latency_ms (p50, p90, p99, mean, sd, median_ci95, p90_ci95, p99_ci95), iterations, cached,
    measured, where, cpu}.

    On TensorRT each FP32 or FP16 item builds at its own precision, except the references in
    `bracket`, which build as the deploy options' precision (the teacher as the user runs it).

    `samples` (N, 3, H, W) float32 in [0, 1] feed the harness (noise by default); `calib`
    images calibrate INT8 (the samples by default). The labels in `bracket` (the reference a
    speed-up divides) are measured twice, first and last, and keep the faster run: a burst of
    other load on the device during one of them cannot loosen a budget that they set."""
    say = progress or (lambda step, detail: None)
    work = Path(work_dir)
    opts = replace(deploy, batch_sizes=[spec.batch], settings=settings, models=None)
    device = connect(opts, say)
    fingerprint = environment_fingerprint(device.probe, opts.backend)
    shape = (max(spec.batch, 32), 3, spec.input_size, spec.input_size)
    if samples is None:
        samples = np.random.default_rng(0).random(shape, dtype=np.float32)
    calib = samples[:64] if calib is None else calib

    out: dict[str, dict] = {}
    idents: dict[str, dict] = {}
    builds: dict[str, str | None] = {}
    todo = []
    for name, precision, size in items:
        key = label(name, precision, size)
        trt = None
        if opts.backend == "tensorrt":  # a Q/DQ model builds as INT8 whatever is asked
            trt = "int8" if precision == "int8" else opts.precision if key in bracket else precision
        builds[key] = trt
        ident = {"environment": fingerprint, "arch": name, "arch_id": arch_id(name, spec.num_classes),
                 "input_size": spec.input_size, "num_classes": spec.num_classes, "batch": spec.batch,
                 "backend": opts.backend, "precision": precision, "threads": opts.threads,
                 "providers": list(opts.providers or []), "opset": spec.opset,
                 "ir_version": spec.ir_version, "for_tensorrt": spec.for_tensorrt,
                 "trt_precision": trt, "settings": settings.__dict__,
                 "harness": {"deploy_schema": SCHEMA_VERSION, "edgekd": __version__}}
        if size is not None:  # only then: the run-size entries measured before stay valid
            ident["computes_at"] = size
        idents[key] = ident
        hit = cache.get(LatencyCache.key(ident))
        if hit is not None:
            out[key] = {"input_size": size or spec.input_size, **hit, "cached": True}
        else:
            todo.append((name, precision, size))
    keys = [label(*it) for it in items]
    say("cache", f"{len(items) - len(todo)} of {len(items)} measurements cached for "
                 f"{device.target.display}")
    if not todo:
        return {k: out[k] for k in keys}

    models_dir = work / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    say("export", f"{len(todo)} models to ONNX (random weights)")
    for i, (name, precision, size) in enumerate(todo, 1):
        key = label(name, precision, size)
        if on_export is not None:
            on_export(i - 1, len(todo), key)
        else:
            say("export", f"{i}/{len(todo)} {key}")
        info = describe_arch(name, spec, size)
        entries[key] = {**export_random(name, precision, spec, models_dir, calib, size),
                        **info, "role": "candidate",
                        **({"trt_precision": builds[key]} if builds[key] else {})}
    if on_export is not None:
        on_export(len(todo), len(todo), "")
    twice = [k for k in entries if k in bracket]
    order = [*twice, *(k for k in entries if k not in twice), *(f"{k}{AGAIN}" for k in twice)]
    for k in twice:  # the same file under a second key, run last (run_bundle keeps this order)
        entries[f"{k}{AGAIN}"] = dict(entries[k])
    np.save(work / "samples.npy", np.ascontiguousarray(samples, dtype=np.float32))
    np.save(work / "samples_labels.npy", np.zeros(len(samples), dtype=np.int64))
    try:
        manifest = build_bundle(str(work / "bundle"), entries, str(work / "samples.npy"),
                                str(work / "samples_labels.npy"), "edgekd-select")
    except (DeployError, RunnerUnavailable) as e:
        raise ShipError(str(e)) from None
    say("bundle", f"{len(entries)} models, {manifest_bytes(manifest) / 2**20:.1f} MiB")
    result = run_on_device(device, work / "bundle", manifest, replace(opts, models=order), say)
    doc = result["document"]
    for k in twice:
        first, last = doc["models"][k], doc["models"].pop(f"{k}{AGAIN}")
        p50 = [m["results"][0]["latency_ms"]["p50"] for m in (first, last)]
        doc["models"][k] = first if p50[0] <= p50[1] else last
        doc["models"][k]["bracket_p50_ms"] = p50
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for name, precision, size in todo:
        key = label(name, precision, size)
        model_doc = doc["models"].get(key)
        if model_doc is None:
            raise SelectError(f"the target measured no {key}: rerun the selection")
        r = model_doc["results"][0]
        record = {"arch": name, "params": entries[key]["params"], "macs": entries[key]["macs"],
                  "input_size": entries[key]["input_size"], "precision": precision,
                  "latency_ms": {k: r["latency_ms"][k] for k in LATENCY_KEYS if k in r["latency_ms"]},
                  "iterations": r["iterations"], "throughput_ips": r["throughput_ips"],
                  **({"bracket_p50_ms": model_doc["bracket_p50_ms"]} if "bracket_p50_ms" in model_doc else {}),
                  "measured": stamp, "where": doc.get("where"),
                  "cpu": ((doc.get("environment") or {}).get("cpu") or {}).get("model")}
        cache.put(LatencyCache.key(idents[key]), idents[key], record)
        out[key] = {**record, "cached": False}
    return {k: out[k] for k in keys}
