"""INT8 for an exported model: calibration set from the training split, ONNX Runtime static
QDQ quantization (calibration/), accuracy on the test split against FP32, and the budget.

The graph takes raw [0, 1] pixels (normalisation is folded in), so the calibration images
are the uint8 training images divided by 255, exactly what the device feeds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from calibration import (
    CalibrationError,
    check_contract,
    load_calibset,
    stratified_indices,
    write_calibset,
)
from edgekd.config.targets import runs_tensorrt
from edgekd.data import Dataset
from edgekd.errors import EdgeKDError
from edgekd.export.onnx import read_contract

CALIB_DIR = "calib"  # RUN/calib/: the name deploy's bundle looks for


class QuantizeError(EdgeKDError):
    """INT8 quantization was refused: over its accuracy budget, or given mismatched inputs."""


def int8_path(fp32: str | Path) -> Path:
    """student.onnx -> student.int8.onnx (the name bench and deploy look for)."""
    fp32 = Path(fp32)
    return fp32.with_name(fp32.name.removesuffix(".onnx") + ".int8.onnx")


def pixels(images) -> np.ndarray:
    """uint8 (N, 3, H, W) images (tensor or array) -> float32 model input in [0, 1]."""
    return np.asarray(images, dtype=np.float32) / np.float32(255.0)


def calibration_indices(data: Dataset, n: int, seed: int) -> np.ndarray:
    """The training images a run calibrates INT8 on: `n`, stratified by class, seeded."""
    try:
        return stratified_indices(data.train.labels.numpy(), n, seed)
    except CalibrationError as e:
        raise QuantizeError(str(e)) from None


def write_run_calibset(folder: str | Path, data: Dataset, n: int, seed: int) -> dict:
    """Write (or keep, when it already holds the same choice) a stratified calibration set of
    `n` training images (calibration_indices); returns its calib.json."""
    folder = Path(folder)
    labels = data.train.labels.numpy()
    source = f"{data.name} train split, fingerprint {data.fingerprint()[:16]}"
    try:
        existing = load_calibset(folder, verify=True).meta
        if existing["count"] == n and existing["seed"] == seed and existing["source"] == source:
            return existing
    except CalibrationError:
        pass
    idx = calibration_indices(data, n, seed)
    write_calibset(folder, pixels(data.train.images[idx]), labels[idx], data.classes, seed,
                   source, overwrite=True)
    return load_calibset(folder, verify=False).meta


def diagnosis_paths(out: str | Path) -> tuple[Path, Path]:
    """Where the per-layer diagnosis of the INT8 model `out` goes: <name>.diagnosis.{json,png}."""
    out = Path(out)
    stem = out.name.removesuffix(".onnx")
    return out.with_name(stem + ".diagnosis.json"), out.with_name(stem + ".diagnosis.png")


def diagnose_onnx(fp32: str | Path, int8: str | Path, images, json_path: str | Path,
                  png_path: str | Path | None = None) -> dict:
    """Per-layer diagnosis (calibration.diagnose) of `int8` against `fp32` on `images`,
    written as JSON (and a PNG bar chart of the worst layers); returns the document."""
    from calibration.diagnose import diagnose

    try:
        doc = diagnose(fp32, int8, images)
    except CalibrationError as e:
        raise QuantizeError(str(e)) from None
    doc.update(fp32=str(fp32), int8=str(int8))
    from edgekd.io import write_json

    write_json(json_path, doc)
    if png_path is not None:
        from edgekd.export.plot import diagnosis_png

        diagnosis_png(doc, png_path)
    return doc


def _worst(doc: dict, n: int = 3) -> str:
    return ", ".join(f"{r['module'] or r['tensor']} ({r['sqnr_db']:.1f} dB)" for r in doc["rows"][:n]
                     if r["sqnr_db"] is not None)


def quantize_onnx(
    fp32: str | Path,
    out: str | Path,
    calib_dir: str | Path,
    test_images,
    test_labels,
    method: str = "minmax",
    max_drop: float = 1.0,
    exclude: Sequence[str] = (),
    for_tensorrt: bool | None = None,
    auto_fallback: bool = False,
    diagnose: bool = False,
    reference: str | Path | None = None,
    reduce_range: bool = False,
) -> dict:
    """Quantize `fp32` to INT8 QDQ with the set in `calib_dir`, measure top-1 on the test
    images against FP32 and write `out` only when the drop is within `max_drop` pp.

    A calibration set that does not fit the model's input contract is refused; over budget,
    nothing is written but the per-layer diagnosis (<out>.diagnosis.json / .png), and the
    error names the measured drop, the worst layers and the remedies. With `auto_fallback`
    the most sensitive layers (by the diagnosis, one quantized tensor at a time) are kept in
    FP32 until the drop fits, and `fallback` records which and what that cost in latency
    (measured here, ONNX Runtime CPU). `diagnose` writes the diagnosis of the final model too.
    With `for_tensorrt` (default: the model was exported for a jetson-* target) the Q/DQ are
    placed as TensorRT's explicit quantization wants them (symmetric, FP32 bias).
    `reference` is the FP32 model the drop is measured against when it is not `fp32` itself
    (after quantization-aware distillation: the student as trained, not its fine-tuned copy).

    The drop is that of the quantized graph's own arithmetic (what TensorRT, ARM and VNNI/AMX
    x86 kernels compute); `host_kernels` adds what this workstation's ONNX Runtime kernels
    score, which on an x86 CPU without VNNI saturate, and a note when that costs more.
    `reduce_range` quantizes weights to 7 bits, which such CPUs compute without saturating.
    """
    from calibration import compare_accuracy, quantize_static_qdq

    fp32, out = Path(fp32), Path(out)
    if not fp32.is_file():
        raise QuantizeError(f"no ONNX model at {fp32}: export one first (edgekd export)")
    if max_drop < 0:
        raise QuantizeError(f"the accuracy budget must be >= 0 pp, got {max_drop}")
    json_path, png_path = diagnosis_paths(out)
    try:
        calib = load_calibset(calib_dir)
        contract = read_contract(fp32)
        check_contract(calib.meta, contract)
        if for_tensorrt is None:
            for_tensorrt = runs_tensorrt(contract.get("target", ""))
        out.parent.mkdir(parents=True, exist_ok=True)
        # The diagnosis runs on test images, as the device will see them (a calibration set
        # that misses their range is exactly what it must show).
        probe = np.asarray(test_images[:128], dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp_dir:
            tmp = Path(tmp_dir) / "int8.onnx"
            excluded = list(exclude)
            steps: list[dict] = []
            first = None
            while True:
                info = quantize_static_qdq(fp32, tmp, calib.images, method=method, exclude=excluded,
                                           for_tensorrt=for_tensorrt, reduce_range=reduce_range)
                accuracy = compare_accuracy(reference or fp32, tmp, test_images, test_labels)
                if first is None and auto_fallback:
                    first = Path(tmp_dir) / "all-int8.onnx"
                    first.write_bytes(tmp.read_bytes())
                if accuracy["drop_pp"] <= max_drop:
                    break
                doc = diagnose_onnx(fp32, tmp, probe, json_path, png_path)
                if not auto_fallback:
                    raise QuantizeError(
                        f"{fp32.name}: INT8 accuracy dropped {accuracy['drop_pp']:.2f} pp (> budget "
                        f"{max_drop:.2f} pp); the worst layers are {_worst(doc)} (per-layer table: "
                        f"{json_path}): keep them in FP32 with --auto-fallback or --exclude, train "
                        "the student back with --qat-epochs, or try more calibration images "
                        "(--calib-size) or another --method")
                # The most sensitive tensor whose readers are still quantized: keep them in FP32.
                row = next((r for r in doc["rows"] if r["consumers"]
                            and not set(r["consumers"]) <= set(excluded)), None)
                if row is None:
                    raise QuantizeError(
                        f"{fp32.name}: --auto-fallback kept every quantized layer in FP32 and the drop "
                        f"is still {accuracy['drop_pp']:.2f} pp (> {max_drop:.2f} pp): INT8 buys "
                        f"nothing here; ship the FP32 model (per-layer table: {json_path})")
                new = [c for c in row["consumers"] if c not in excluded]
                excluded += new
                steps.append({"tensor": row["tensor"], "module": row["module"], "sqnr_db": row["sqnr_db"],
                              "kept_fp32": new, "drop_pp_before": round(accuracy["drop_pp"], 3)})
            info["accuracy"] = accuracy
            info["max_drop_pp"] = max_drop
            if steps and info["quantized_nodes"] == 0:
                raise QuantizeError(
                    f"{fp32.name}: --auto-fallback had to keep every quantized layer in FP32 to meet "
                    f"{max_drop:.2f} pp: INT8 buys nothing here; ship the FP32 model (per-layer "
                    f"table: {json_path})")
            if auto_fallback:
                info["fallback"] = _fallback_record(steps, exclude, first, tmp, accuracy)
            info["host_kernels"] = _host_kernels(tmp, test_images, test_labels, accuracy)
            if diagnose:
                info["diagnosis"] = {"json": str(json_path), "png": str(png_path),
                                     "worst": diagnose_onnx(fp32, tmp, probe, json_path, png_path)["rows"][:10]}
            os.replace(tmp, out)
    except CalibrationError as e:
        raise QuantizeError(f"{fp32.name}: {e}") from None
    info["out_path"] = str(out)
    if reference is not None:
        from calibration import evaluate_onnx

        info["quantized_from"] = str(fp32)
        info["accuracy_reference"] = str(reference)
        # How much of the result is the fine-tuning itself: the FP32 copy that was quantized.
        info["accuracy"]["source_fp32_top1"] = evaluate_onnx(fp32, test_images, test_labels)["top1"]
    info["calibration"] = {"dir": str(calib_dir), "count": calib.meta["count"],
                           "seed": calib.meta["seed"], "source": calib.meta["source"]}
    return info


def _host_kernels(int8: Path, images, labels, accuracy: dict) -> dict:
    """This CPU's ONNX Runtime INT8 kernels against the graph's exact arithmetic."""
    from calibration import evaluate_onnx
    from deploy.envinfo import cpu_model, int8_isa

    top1 = evaluate_onnx(int8, images, labels)["top1"]
    record = {"int8_top1": top1, "drop_pp": round(accuracy["fp32_top1"] - top1, 3),
              "cpu": cpu_model(), "int8_isa": int8_isa()}
    extra = record["drop_pp"] - accuracy["drop_pp"]
    if extra > 0.5:
        isa = record["int8_isa"] or []
        why = ("its INT8 kernels sum pairs of products in 16 bits without VNNI and saturate"
               if "avx2" in isa and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(isa)
               else "its INT8 kernels differ from the graph's arithmetic")
        record["note"] = (f"on this CPU the INT8 model loses {record['drop_pp']:.2f} pp, "
                          f"{extra:.2f} pp more than the graph itself: {why}; for an x86 target "
                          "without VNNI, quantize with --reduce-range")
    return record


def _fallback_record(steps: list[dict], given: Sequence[str], all_int8: Path | None, final: Path,
                     accuracy: dict) -> dict:
    """What --auto-fallback kept in FP32 and what that cost: the all-INT8 model against the
    final one, p50 at batch 1 and 64 on this CPU (ONNX Runtime, short runs)."""
    kept = [n for s in steps for n in s["kept_fp32"]]
    record: dict = {"steps": steps, "kept_fp32": kept, "given_exclude": list(given),
                    "drop_pp": round(accuracy["drop_pp"], 3)}
    if kept and all_int8 is not None:
        from deploy.bench import run_bench
        from deploy.harness import MeasureSettings

        settings = MeasureSettings(warmup_s=0.2, warmup_iters=3, min_iters=15, min_s=0.5, max_s=10.0)
        latency = {}
        for name, path in (("all_int8", all_int8), ("with_fallback", final)):
            doc = run_bench(str(path), "onnxruntime", None, [1, 64], settings, keep_timings=False,
                            power="off")
            latency[name] = {f"batch_{r['batch_size']}": r["latency_ms"]["p50"] for r in doc["results"]}
        record["latency_p50_ms"] = latency
        record["latency_cost"] = {b: round(latency["with_fallback"][b] / latency["all_int8"][b], 3)
                                  for b in latency["all_int8"]}
    return record
